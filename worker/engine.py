"""The inference engine a worker process holds: one ONNX Runtime session, reused for every chunk."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.codec import Matrix
from contract.cpu_features import AVX2_WEIGHTS, cpu_flags, exact_fast_weight_type
from contract.manifest import TOKENIZER_FILE, Manifest, OrtSession, load_manifest
from contract.settings import FleetSettings, get_settings
from worker.batching import TokenBudgetBatcher
from worker.pooling import l2_normalize, mean_pool
from worker.run_cost import RunCost, measure_run_cost
from worker.tokenization import TextTokenizer, TokenBatch, limit_threads

log = logging.getLogger(__name__)

OPT_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
WARMUP_TEXTS = ("warm up the session", "a slightly longer sentence to warm up a second shape")
WARMUP_SHORTEST_TOKENS = 8


@dataclass(frozen=True)
class EmbedResult:
    vectors: Matrix
    truncated: list[bool]


def session_options(spec: OrtSession, threads: int) -> ort.SessionOptions:
    """Options every consumer of the artifact applies: its graph level, bounded threads, no spinning."""
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[spec.graph_optimization_level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle prefork children must not burn CPU; each batch shape would also grow the memory patterns.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = False
    return options


def open_session(
    model_path: Path, spec: OrtSession, threads: int, providers: Sequence[str]
) -> ort.InferenceSession:
    available = set(ort.get_available_providers())
    chosen = [name for name in providers if name in available] or ["CPUExecutionProvider"]
    if list(chosen) != list(providers):
        log.warning("providers %s not all available (have %s); using %s", providers, available, chosen)
    return ort.InferenceSession(
        str(model_path),
        sess_options=session_options(spec, threads),
        providers=chosen,
        disabled_optimizers=spec.disabled_optimizers or None,
    )


class SentenceEncoder:
    """Tokenise, batch by length, run, mean-pool, normalise; vectors come back in input order.

    Works on any ONNX file of the model (the build's checks use it on intermediate files);
    `EmbeddingEngine` is the same thing opened from a verified artifact.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: TextTokenizer,
        batcher: TokenBudgetBatcher,
        normalize: bool,
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.batcher = batcher
        self.normalize = normalize
        self._input_names = {node.name for node in session.get_inputs()}
        self._output_name = session.get_outputs()[0].name
        self.dims = int(session.get_outputs()[0].shape[-1])

    @classmethod
    def open(
        cls,
        model_path: Path,
        tokenizer_file: Path,
        max_seq_length: int,
        normalize: bool = True,
        ort_session: OrtSession | None = None,
        settings: FleetSettings | None = None,
    ) -> SentenceEncoder:
        settings = settings or get_settings()
        parts = _open_parts(model_path, tokenizer_file, max_seq_length, ort_session or OrtSession(), settings)
        return cls(*parts, normalize)

    def warm_up(self) -> None:
        """Run a small batch, then full batches at the model's limit and at each halving of it:
        ORT's arena grows to its working size now, not an hour into a run as rare shapes arrive."""
        self.embed(list(WARMUP_TEXTS))
        length = self.tokenizer.max_seq_length
        while length >= WARMUP_SHORTEST_TOKENS:
            rows = min(self.batcher.max_batch_size, max(1, self.batcher.token_budget // length))
            self.embed([_text_of(length)] * rows)
            length //= 2

    def probe(self, size: int, length: int) -> Callable[[], object]:
        """One engine run of `size` texts of `length` tokens each, ready to time (worker.run_cost)."""
        tokens = self.tokenizer.pad(self.tokenizer.encode([_text_of(length)] * size)[0])
        return lambda: self._run(tokens)

    def embed(self, texts: Sequence[str], before_each_run: Callable[[], object] | None = None) -> EmbedResult:
        """`before_each_run` lets a long call yield to more urgent work between its engine runs."""
        vectors = np.zeros((len(texts), self.dims), dtype=np.float32)
        if not texts:
            return EmbedResult(vectors, [])
        encodings, truncated = self.tokenizer.encode(texts)
        for batch in self.batcher.batches([len(encoding.ids) for encoding in encodings]):
            if before_each_run is not None:
                before_each_run()
            tokens = self.tokenizer.pad([encodings[i] for i in batch])
            vectors[batch] = self._run(tokens)
        return EmbedResult(vectors, truncated)

    def _run(self, tokens: TokenBatch) -> Matrix:
        feeds = {
            "input_ids": tokens.input_ids,
            "attention_mask": tokens.attention_mask,
            "token_type_ids": tokens.token_type_ids,
        }
        inputs = {name: value for name, value in feeds.items() if name in self._input_names}
        (output,) = self.session.run([self._output_name], inputs)
        pooled = mean_pool(output, tokens.attention_mask) if output.ndim == 3 else output
        return l2_normalize(pooled) if self.normalize else pooled.astype(np.float32)


def _text_of(length: int) -> str:
    """A text of `length` tokens: [CLS] and [SEP] make up the length."""
    return " ".join(["warm"] * (length - 2))


class EmbeddingEngine(SentenceEncoder):
    """The encoder of a verified artifact: what each worker process opens once and keeps."""

    def __init__(self, model_dir: Path, settings: FleetSettings | None = None) -> None:
        settings = settings or get_settings()
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir)
        flags = cpu_flags()
        self.fingerprint = self.manifest.serving_fingerprint(flags)
        mismatch = weights_mismatch(self.manifest, flags)
        if mismatch:
            log.warning(mismatch)
        self.threads = settings.threads_per_process()
        parts = _open_parts(
            self.model_dir / self.manifest.file,
            self.model_dir / TOKENIZER_FILE,
            self.manifest.max_seq_length,
            self.manifest.ort_session,
            settings,
        )
        super().__init__(*parts, self.manifest.normalize)
        self._measure_overhead = settings.run_overhead_tokens is None
        self._max_run_s = settings.max_run_s

    def warm_up(self) -> None:
        """Also prices a run on this host: the price of one more (where EMBED_RUN_OVERHEAD_TOKENS
        leaves it to us) and how many padded tokens fit in EMBED_MAX_RUN_S."""
        super().warm_up()
        if not self._measure_overhead and not self._max_run_s:
            return
        cost = measure_run_cost(self.probe)
        if self._measure_overhead:
            self.batcher = replace(self.batcher, run_overhead_tokens=cost.overhead_tokens)
        if self._max_run_s:
            self.batcher = replace(self.batcher, token_budget=self._capped_budget(cost))
        log.info(
            "one engine run costs %.2f ms + %.1f us per padded token: batches are cut where padding "
            "costs more than %d tokens, at most %d padded tokens a run",
            cost.fixed_s * 1e3,
            cost.per_token_s * 1e6,
            self.batcher.run_overhead_tokens,
            self.batcher.token_budget,
        )

    def _capped_budget(self, cost: RunCost) -> int:
        """EMBED_TOKEN_BUDGET, lowered to what a run holds in EMBED_MAX_RUN_S; never below one text
        at the model's limit, which runs alone whatever it costs."""
        within = cost.tokens_within(self._max_run_s)
        if within is None:
            return self.batcher.token_budget
        return min(self.batcher.token_budget, max(within, self.tokenizer.max_seq_length))


def weights_mismatch(manifest: Manifest, flags: Iterable[str]) -> str | None:
    """Why this CPU serves the artifact less well than its build host did, or None."""
    built_for = manifest.quantization.settings.get("weight_type")
    if manifest.quantization.format != "static-int8" or built_for is None:
        return None
    best = exact_fast_weight_type(flags)
    if built_for == best:
        return None
    if best == AVX2_WEIGHTS:
        effect = "without VNNI its int8 weights saturate in int16 sums: vectors lose accuracy"
    else:
        effect = "this CPU has VNNI, where int8 weights are exact and about 2x faster"
    return (
        f"{manifest.name} was built with {built_for} weights; {effect}. Rebuild for these hosts with "
        f"`python -m modelbuild build --weights {best} --out DIR`"
    )


def _open_parts(
    model_path: Path,
    tokenizer_file: Path,
    max_seq_length: int,
    ort_session: OrtSession,
    settings: FleetSettings,
) -> tuple[ort.InferenceSession, TextTokenizer, TokenBudgetBatcher]:
    """Session, tokenizer and batcher of an encoder, from the model's files and the settings."""
    threads = settings.threads_per_process()
    session = open_session(model_path, ort_session, threads, settings.providers)
    limit_threads(threads)
    tokenizer = TextTokenizer(tokenizer_file, max_seq_length, settings.max_text_chars)
    return (
        session,
        tokenizer,
        TokenBudgetBatcher(settings.token_budget, settings.max_batch_size, settings.run_overhead_tokens or 0),
    )
