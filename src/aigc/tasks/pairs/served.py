"""A translation run behind ``aigc serve``: its model answers completions and chats by translating, with the
run's own ``generate`` settings (beam search included), one request at a time."""

from __future__ import annotations

from aigc.config import GenerateConfig
from aigc.generate.sampling import SamplingParams
from aigc.serve.scheduler import Event, QueueWorker, Request
from aigc.serve.schemas import Message
from aigc.serve.settings import ServeSettings
from aigc.serve.workers import InvalidRequest, TextModel
from aigc.tasks.pairs.translator import Translator, beam_params


class TranslationWorker(QueueWorker):
    """Encoder-decoder runs, one request at a time on one thread, in order, as ``aigc generate`` translates: with
    the run's beam search (``generate.beams`` > 1) a request's ``n`` choices are its ``n`` best hypotheses,
    otherwise its source is decoded ``n`` times (greedy or sampled)."""

    thread_name = "aigc-translate"

    def __init__(self, generator: Translator, settings: GenerateConfig, max_waiting: int = 256):
        super().__init__(max_waiting)
        self.generator, self.settings, self.active = generator, settings, None

    @property
    def running(self) -> int:
        return int(self.active is not None)

    def _loop(self) -> None:
        eot = self.generator.eot
        while True:
            with self._lock:
                if not self._wait_for_work():
                    return
                request = self.active = self.waiting.popleft()
            try:
                if request.cancelled:
                    self.cancelled += request.n
                    continue
                beam = beam_params(self.settings, request.params.max_new_tokens, n_best=request.n)
                if beam is None:
                    results = self.generator.translate_ids([request.prompt + [eot]] * request.n, request.params)
                    choices = [hypotheses[0] for hypotheses in results]
                else:
                    choices = self.generator.translate_ids([request.prompt + [eot]], request.params, beam)[0]
                for index, choice in enumerate(choices):
                    tokens = choice.tokens
                    request.completion_tokens += len(tokens)
                    finish = "length" if len(tokens) >= request.params.max_new_tokens else "stop"
                    request.sink(Event(index, text=self.generator.decode_target(tokens), finish_reason=finish))
            except Exception as err:
                for index in range(request.n):
                    request.sink(Event(index, error=f"translation failed: {err}"))
            finally:
                self.active = None


class TranslationModel(TextModel):
    """An encoder-decoder: the source fills the encoder, the translation has a context of its own."""

    kind, api = "seq2seq", "translations"

    @classmethod
    def create(cls, model_id: str, generator: Translator, defaults: GenerateConfig,
               settings: ServeSettings) -> TranslationModel:
        return cls(model_id, generator, TranslationWorker(generator, defaults, settings.max_waiting), defaults)

    def chat_prompt(self, messages: list[Message], tools: list[dict] | None = None) -> tuple[str, list[str]]:
        """A translation model translates the last user message."""
        return next((m.text for m in reversed(messages) if m.role == "user"), ""), []

    def check_request(self, params: SamplingParams, echo: bool) -> None:
        """A translation is not a continuation: no echo; it ends at the target's end of text, so no stop strings or
        stop ids; and log-probabilities are not reported."""
        for asked, field, why in [(echo, "echo", "a translation does not continue its source"),
                                  (params.stop, "stop", "a translation ends at its end of text"),
                                  (params.stop_token_ids, "stop_token_ids", "a translation ends at its end of text"),
                                  (params.logprobs, "logprobs", "translation models do not report log-probabilities"),
                                  (params.grammar, "response_format", "translations are not constrained")]:
            if asked:
                raise InvalidRequest(f"'{field}' is not supported by translation models: {why}", field,
                                     "unsupported_parameter")

    def check_queue(self, requests: list[Request]) -> None:
        """Also refuse (400) more choices than the run's beam search keeps hypotheses."""
        super().check_queue(requests)
        beams = self.defaults.beams
        if beams > 1 and any(r.n > beams for r in requests):
            raise InvalidRequest(f"n is at most {beams} for this model: its choices are the best hypotheses of its "
                                 f"beam search (generate.beams={beams})", "n")
