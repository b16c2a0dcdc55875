"""Synthetic telemetry for canary-gate: named scenarios whose verdict is known.

Each scenario is healthy baseline traffic with one fault laid over it, judged
under the rollout config that `scenario_config` returns (stage 50%, 60 s
windows, a 600 s horizon, 300 s promotion sustain, every threshold at its
default).

Traffic model (healthy baseline)
--------------------------------
- Variants `control` and `canary-v2` at equal volume, in regions `us-east`
  and `eu-west`. Each (variant, region) sends Poisson user requests at
  3/s, so a 600 s horizon holds about 1,800 per variant per region, far above
  `min_warm_requests`. Routes `chat.rag.answer` (70%) and `chat.rag.search`.
- 5% of user requests pay a cold start, three to five times slower. Warm
  latencies are log-normal: tffb about 150 ms, tusable about 400 ms, tfinal
  about 1,300 ms, the same for both variants.
- 0.3% of user requests fail with 503 at `headers`, on both variants, so that
  class is shared and never new. Errors and cache hits are spaced by an
  accumulator rather than drawn, so both variants show exactly the same rate
  and the promotion-only gates (`error_rate`, `cache_hit_regression`) cannot
  flap on sampling noise and break the promotion sustain.
- Every user request carries the variant's configured retrieval settings,
  90% carry a cache block with the variant's prefix (hit rate 0.6), and 0.5%
  are delivered twice, byte for byte.
- Sticky keys come from disjoint pools per variant (`c-*` and `k-*`).
- Each variant runs a gold-probe board: one probe every 4 s (15 a minute),
  cycling through 12 questions in 3 topics x 3 paraphrases x 2 seeds, so
  every (question, paraphrase, seed) recurs every 4.8 minutes and each topic
  gets 5 canary probes a minute (the 20 needed per topic after 4 minutes).
  Probes have ΔS about 0.30, coverage about 0.80 and λ `→`.
- Each (variant, region) sends an `x_warm` ping every 20 s (no retrieval,
  no cache block).
- About 10% of events spell retrieval keys in ASCII (`index_hash`,
  `delta_s_q_r`, `lambda_state`) and about 10% spell λ as a word; never
  both spellings of one key in one event.
- Events are delivered in event-time order except in `out_of_order`.

Volume is about 770 events a minute (11,500 for 15 minutes; `low_traffic`
about 520).

Randomness comes from `random.Random` instances seeded with strings derived
from the seed and the stream (string seeds hash with SHA-512, so they do not
depend on `PYTHONHASHSEED`). Faults draw from their own generators, so a
scenario's unaffected streams are byte-identical to `healthy` with the same
seed.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = [
    "DEFAULT_START",
    "SCENARIOS",
    "Scenario",
    "generate",
    "scenario_config",
]

DEFAULT_START = datetime(2025, 8, 27, 6, 0, 0, tzinfo=UTC)

CONTROL = "control"
CANARY = "canary-v2"
REGIONS = ("us-east", "eu-west")
TOPICS = ("billing", "returns", "shipping")
QUESTIONS_PER_TOPIC = 4
PARAPHRASES = 3
PROBE_SEEDS = 2

_EDGE_POPS: Mapping[str, tuple[str, ...]] = {
    "us-east": ("iad", "ewr", "atl"),
    "eu-west": ("fra", "ams", "cdg"),
}
_ANSWER = "chat.rag.answer"
_SEARCH = "chat.rag.search"
EXPERIMENT = "exp-chat-rag-v2"

_USER_RATE_PER_S = 3.0
_COLD_FRACTION = 0.05
_ERROR_RATE = 0.003
_CACHE_BLOCK_FRACTION = 0.9
_CACHE_HIT_RATE = 0.6
_DUPLICATE_FRACTION = 0.005
_ASCII_KEYS_FRACTION = 0.1
_LAMBDA_WORD_FRACTION = 0.1
_STICKY_POOL = 2000
_PROBE_PERIOD_MS = 4000
_PING_PERIOD_MS = 20_000
_ONSET_MS = 120_000

# Out-of-order delivery: jitter stays below allowed_lateness_s (30 s), the
# stragglers arrive long after their window closed.
_JITTER_MS = 20_000
_STRAGGLERS = 5
_STRAGGLER_DELAY_MS = 200_000

_LAMBDA_WORDS: Mapping[str, str] = {
    "→": "convergent",
    "←": "divergent",
    "<>": "recursive",
    "×": "chaotic",
}

_Json = dict[str, object]
# (event time ms, stream number, sequence within stream, payload); the first
# three make the order total, so the payload is never compared.
_Item = tuple[int, int, int, bytes]


@dataclass(frozen=True)
class Scenario:
    """A named traffic pattern and the decision its last verdict must reach."""

    name: str
    description: str
    expected_decision: str
    expected_gates: frozenset[str]
    min_minutes: int


@dataclass(frozen=True)
class _VariantSetup:
    index_hash: str
    metric: str
    analyzer: str
    cache_prefix: str
    sticky_prefix: str


_SETUP: Mapping[str, _VariantSetup] = {
    CONTROL: _VariantSetup("0x9a76", "cosine", "bilstem", "v1:", "c-"),
    CANARY: _VariantSetup("0x9a77", "cosine", "bilstem", "v2-cnr:", "k-"),
}


@dataclass(frozen=True)
class _Faults:
    """What a scenario changes on top of the healthy baseline (canary only)."""

    user_rate_per_s: float = _USER_RATE_PER_S
    # Warm tfinal multiplier per region, from _ONSET_MS on.
    warm_tfinal_factor: Mapping[str, float] = field(default_factory=dict)
    cold_factor: float = 1.0
    ping_factor: float = 1.0
    # Share of requests failing 502 at body, from _ONSET_MS on.
    new_class_rate: float = 0.0
    analyzer_by_region: Mapping[str, str] = field(default_factory=dict)
    foreign_prefix_rate: float = 0.0
    coverage_by_topic: Mapping[str, float] = field(default_factory=dict)
    flip_questions: frozenset[str] = frozenset()
    violation_rate: float = 0.0
    out_of_order: bool = False
    onset_ms: int = _ONSET_MS  # when the regressions above start


def _question_id(topic_index: int, question: int) -> str:
    return f"q{topic_index * QUESTIONS_PER_TOPIC + question + 1:03d}"


# The second question of each topic flips: three questions, each on all
# three paraphrases, well past lambda_flip_stop = 2.
_FLIPPING = frozenset(_question_id(t, 1) for t in range(len(TOPICS)))

_CATALOGUE: tuple[tuple[Scenario, _Faults], ...] = (
    (
        Scenario(
            "healthy",
            "both variants alike; the canary promotes",
            "promote",
            frozenset(),
            15,
        ),
        _Faults(),
    ),
    (
        Scenario(
            "warm_latency_regression",
            "canary warm tfinal 1.6x control in us-east from minute 2",
            "stop",
            frozenset({"p95_warm_latency"}),
            15,
        ),
        _Faults(warm_tfinal_factor={"us-east": 1.6}),
    ),
    (
        Scenario(
            "late_regression",
            "healthy and promoting for 12 minutes, then canary warm tfinal 1.6x control in us-east",
            "stop",
            frozenset({"p95_warm_latency"}),
            20,
        ),
        _Faults(warm_tfinal_factor={"us-east": 1.6}, onset_ms=12 * 60_000),
    ),
    (
        Scenario(
            "cold_start_regression",
            "canary cold starts 3x and x_warm pings 10x slower; warm requests healthy",
            "promote",
            frozenset(),
            15,
        ),
        _Faults(cold_factor=3.0, ping_factor=10.0),
    ),
    (
        Scenario(
            "new_5xx_class",
            "canary fails 2% of requests with 502 at body from minute 2; control never does",
            "stop",
            frozenset({"new_5xx_class"}),
            15,
        ),
        _Faults(new_class_rate=0.02),
    ),
    (
        Scenario(
            "analyzer_skew",
            "canary in eu-west serves with analyzer 'standard' instead of 'bilstem'",
            "stop",
            frozenset({"index_skew", "region_skew"}),
            15,
        ),
        _Faults(analyzer_by_region={"eu-west": "standard"}),
    ),
    (
        Scenario(
            "cache_prefix_collision",
            "canary writes 30% of its cache entries under the control's prefix 'v1:'",
            "stop",
            frozenset({"cache_namespace"}),
            15,
        ),
        _Faults(foreign_prefix_rate=0.3),
    ),
    (
        Scenario(
            "coverage_drop",
            "canary probe coverage on topic 'returns' falls to about 0.55",
            "stop",
            frozenset({"coverage"}),
            15,
        ),
        _Faults(coverage_by_topic={"returns": 0.55}),
    ),
    (
        Scenario(
            "lambda_flips",
            "canary λ flips between → and <> across seeds on three gold questions",
            "stop",
            frozenset({"lambda_convergence"}),
            15,
        ),
        _Faults(flip_questions=_FLIPPING),
    ),
    (
        Scenario(
            "schema_violations",
            "about 1% of canary user requests are truncated JSON or break the schema",
            "stop",
            frozenset({"schema_violations"}),
            15,
        ),
        _Faults(violation_rate=0.01),
    ),
    (
        Scenario(
            "low_traffic",
            "canary serves about 0.03 user requests/s per region; probes still run",
            "insufficient_data",
            frozenset({"p95_warm_latency"}),
            15,
        ),
        _Faults(user_rate_per_s=0.03),
    ),
    (
        Scenario(
            "out_of_order",
            "healthy traffic delivered up to 20 s out of order, plus 5 events 200 s late",
            "promote",
            frozenset(),
            15,
        ),
        _Faults(out_of_order=True),
    ),
)

SCENARIOS: dict[str, Scenario] = {s.name: s for s, _ in _CATALOGUE}
_FAULTS: Mapping[str, _Faults] = {s.name: f for s, f in _CATALOGUE}

_CONFIG = """\
# Rollout config for scenario {name!r}: {description}
[rollout]
name = "chat-rag-v2"
control = "control"
canary = "canary-v2"
stage = "50%"

[variants.control]
index_hash = "0x9a76"
metric = "cosine"
analyzer = "bilstem"
cache_prefix = "v1:"

[variants.canary-v2]
index_hash = "0x9a77"
metric = "cosine"
analyzer = "bilstem"
cache_prefix = "v2-cnr:"

[windows]
size_s = 60
horizon_s = 600
allowed_lateness_s = 30
max_future_s = 300
idle_close_s = 90

[promotion]
sustain_s = 300
"""


def _lookup(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(SCENARIOS)
        raise ValueError(f"unknown scenario {name!r}; known: {known}") from None


def scenario_config(name: str) -> str:
    """Return the TOML rollout config that scenario `name` is judged under."""
    scenario = _lookup(name)
    return _CONFIG.format(name=scenario.name, description=scenario.description)


def generate(
    name: str, seed: int, minutes: int, start: datetime = DEFAULT_START, traffic_scale: float = 1.0, *,
    experiment: str = EXPERIMENT,
) -> Iterator[bytes]:
    """Yield one JSON event per item, as UTF-8 bytes WITHOUT trailing newline, in delivery order.

    Event times cover [start, start + minutes). `traffic_scale` multiplies the
    user request rates (probes and pings keep theirs), e.g. 100 for a
    load test. `experiment` is the `x_exp` of user requests and probes (pings
    carry none), e.g. one per rollout of a fleet. Validation happens here, not on the first `next()`, so a bad
    name fails where it is passed.
    """
    if not traffic_scale > 0:
        raise ValueError(f"traffic_scale must be > 0, got {traffic_scale!r}")
    _lookup(name)
    if minutes < 1:
        raise ValueError(f"minutes must be at least 1, got {minutes!r}")
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(f"start must be timezone-aware, got {start!r}")
    world = _World(seed, _FAULTS[name], start.astimezone(UTC), minutes * 60_000, traffic_scale,
                   experiment=experiment)
    return world.deliver()


def _clip01(x: float) -> float:
    return round(min(1.0, max(0.0, x)), 3)


# Same bytes as json.dumps(ensure_ascii=False, separators=(",", ":")); events
# are trees we build ourselves, and skipping the cycle check halves the cost.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def _dumps(event: _Json) -> bytes:
    return _ENCODER.encode(event).encode("utf-8")


def _retrieval(
    setup: _VariantSetup,
    *,
    analyzer: str,
    k: int,
    delta_s: float,
    coverage: float,
    state: str,
    ascii_keys: bool,
    lambda_word: bool,
) -> _Json:
    lam = _LAMBDA_WORDS[state] if lambda_word else state
    if ascii_keys:
        return {
            "k": k,
            "metric": setup.metric,
            "analyzer": analyzer,
            "index_hash": setup.index_hash,
            "delta_s_q_r": delta_s,
            "coverage": coverage,
            "lambda_state": lam,
        }
    return {
        "k": k,
        "metric": setup.metric,
        "analyzer": analyzer,
        "INDEX_HASH": setup.index_hash,
        "ΔS_q_r": delta_s,
        "coverage": coverage,
        "λ_state": lam,
    }


_LOG_150 = math.log(150.0)
_LOG_250 = math.log(250.0)
_LOG_900 = math.log(900.0)


def _warm_latency(rng: random.Random) -> tuple[float, float, float]:
    """Warm phase latencies: log-normal increments, so tffb <= tusable <= tfinal."""
    # exp(gauss) is lognormvariate's law without its per-call overhead.
    tffb = math.exp(_LOG_150 + 0.25 * rng.gauss())
    tusable = tffb + math.exp(_LOG_250 + 0.3 * rng.gauss())
    tfinal = tusable + math.exp(_LOG_900 + 0.3 * rng.gauss())
    return tffb, tusable, tfinal


def _latency_block(tffb: float, tusable: float, tfinal: float) -> _Json:
    return {"tffb": round(tffb, 1), "tusable": round(tusable, 1), "tfinal": round(tfinal, 1)}


class _World:
    """Streams of one scenario run, merged into delivery order."""

    def __init__(self, seed: int, faults: _Faults, start: datetime, end_ms: int,
                 traffic_scale: float = 1.0, *, experiment: str = EXPERIMENT) -> None:
        self._seed = seed
        self._experiment = experiment
        # Request ids are unique per experiment, so the streams of several can be merged into one.
        self._ids = "" if experiment == EXPERIMENT else f"{experiment}-"
        self._scale = traffic_scale
        self._faults = faults
        self._end_ms = end_ms
        # Timestamps are formatted from whole seconds plus a millisecond part.
        self._base = start.replace(microsecond=0)
        self._base_ms = start.microsecond // 1000
        self._second_texts: dict[int, str] = {}

    def _key(self, *parts: str) -> str:
        return "/".join((str(self._seed), *parts))

    def _ts(self, ms: int) -> str:
        # strftime would dominate the cost; every event of a second shares its text.
        second, milli = divmod(ms + self._base_ms, 1000)
        text = self._second_texts.get(second)
        if text is None:
            if len(self._second_texts) > 4096:
                self._second_texts.clear()
            t = self._base + timedelta(seconds=second)
            text = t.strftime("%Y-%m-%dT%H:%M:%S.")
            self._second_texts[second] = text
        return f"{text}{milli:03d}Z"

    def deliver(self) -> Iterator[bytes]:
        streams: list[Iterator[_Item]] = []
        for variant in (CONTROL, CANARY):
            rate = self._scale * (self._faults.user_rate_per_s if variant == CANARY else _USER_RATE_PER_S)
            for region in REGIONS:
                streams.append(self._users(len(streams), variant, region, rate))
            streams.append(self._probes(len(streams), variant))
            for region in REGIONS:
                streams.append(self._pings(len(streams), variant, region))
        merged = itertools.takewhile(lambda item: item[0] < self._end_ms, heapq.merge(*streams))
        if self._faults.out_of_order:
            return self._shuffle(merged)
        return (item[3] for item in merged)

    def _shuffle(self, items: Iterator[_Item]) -> Iterator[bytes]:
        """Delay each event by 0-20 s and a few by 200 s, then deliver by arrival time."""
        rng = random.Random(self._key("delivery"))
        # Stragglers come from where the stream runs on for 240 s after them,
        # so the watermark has passed their window's end by the time they arrive.
        lo, hi = 60_000, self._end_ms - _STRAGGLER_DELAY_MS - 40_000
        targets = sorted(rng.uniform(lo, hi) for _ in range(_STRAGGLERS)) if hi > lo else []
        pending: list[tuple[int, int, bytes]] = []
        for order, (ts_ms, _, _, payload) in enumerate(items):
            if targets and ts_ms >= targets[0]:
                targets.pop(0)
                arrival = ts_ms + _STRAGGLER_DELAY_MS
            else:
                arrival = ts_ms + rng.randrange(_JITTER_MS)
            heapq.heappush(pending, (arrival, order, payload))
            # No later event can arrive before its own event time.
            while pending and pending[0][0] <= ts_ms:
                yield heapq.heappop(pending)[2]
        while pending:
            yield heapq.heappop(pending)[2]

    def _users(self, stream: int, variant: str, region: str, rate: float) -> Iterator[_Item]:
        if rate <= 0:
            return
        setup = _SETUP[variant]
        faults = self._faults
        is_canary = variant == CANARY
        rng = random.Random(self._key("user", variant, region))
        fault = random.Random(self._key("user", variant, region, "fault"))
        pops = _EDGE_POPS[region]
        analyzer = faults.analyzer_by_region.get(region, setup.analyzer) if is_canary else setup.analyzer
        tfinal_factor = faults.warm_tfinal_factor.get(region, 1.0) if is_canary else 1.0
        cold_factor = faults.cold_factor if is_canary else 1.0
        # The accumulators start at a random phase so streams do not fail in step.
        error_acc = rng.random()
        hit_acc = rng.random()
        t = 0.0
        for n in itertools.count():
            t += rng.expovariate(rate) * 1000.0
            ts_ms = int(t)
            # Baseline draws are unconditional, so faults never shift them.
            cold = rng.random() < _COLD_FRACTION
            cold_mult = rng.uniform(3.0, 5.0)
            route = _ANSWER if rng.random() < 0.7 else _SEARCH
            sticky = f"{setup.sticky_prefix}{rng.randrange(_STICKY_POOL)}"
            pop = rng.choice(pops)
            tffb, tusable, tfinal = _warm_latency(rng)
            delta_s = _clip01(rng.gauss(0.30, 0.05))
            coverage = _clip01(rng.gauss(0.80, 0.05))
            has_cache = rng.random() < _CACHE_BLOCK_FRACTION
            ascii_keys = rng.random() < _ASCII_KEYS_FRACTION
            lambda_word = rng.random() < _LAMBDA_WORD_FRACTION
            duplicate = rng.random() < _DUPLICATE_FRACTION
            egress = route == _ANSWER and rng.random() < 0.05

            error_acc += _ERROR_RATE
            failed = error_acc >= 1.0
            if failed:
                error_acc -= 1.0
            hit = False
            if has_cache:
                hit_acc += _CACHE_HIT_RATE
                hit = hit_acc >= 1.0
                if hit:
                    hit_acc -= 1.0

            after_onset = ts_ms >= faults.onset_ms
            if after_onset and not cold:
                tfinal *= tfinal_factor
                # A slower body drags first usable content along, but less.
                tusable *= 1.0 + (tfinal_factor - 1.0) / 2.0
            status, phase = 200, None
            if failed:
                status, phase = 503, "headers"
                tusable = tfinal = tffb
            elif is_canary and after_onset and fault.random() < faults.new_class_rate:
                status, phase = 502, "body"
                tfinal = tusable
            if cold:
                mult = cold_mult * cold_factor
                tffb, tusable, tfinal = tffb * mult, tusable * mult, tfinal * mult

            request_id = f"{self._ids}{variant}-{region}-{n:07d}"
            event: _Json = {
                "ts": self._ts(ts_ms),
                "route": route,
                "variant": variant,
                "sticky": sticky,
                "region": region,
                "edge_pop": pop,
                "cold_start": cold,
                "x_exp": self._experiment,
                "request_id": request_id,
                "latency_ms": _latency_block(tffb, tusable, tfinal),
                "status": status,
            }
            if phase is not None:
                event["failure_phase"] = phase
            event["retrieval"] = _retrieval(
                setup,
                analyzer=analyzer,
                k=10 if route == _ANSWER else 20,
                delta_s=delta_s,
                coverage=coverage,
                state="→",
                ascii_keys=ascii_keys,
                lambda_word=lambda_word,
            )
            if has_cache:
                prefix = setup.cache_prefix
                if is_canary and fault.random() < faults.foreign_prefix_rate:
                    prefix = _SETUP[CONTROL].cache_prefix
                event["cache"] = {"prefix": prefix, "hit": hit}
            if egress:
                event["egress"] = {"webhook": "billing", "tries": 1, "dedupe_key": f"{request_id}:billing"}

            if is_canary and fault.random() < faults.violation_rate:
                payload = _violate(event, fault)
            else:
                payload = _dumps(event)
            yield (ts_ms, stream, 2 * n, payload)
            if duplicate:
                yield (ts_ms, stream, 2 * n + 1, payload)

    def _probes(self, stream: int, variant: str) -> Iterator[_Item]:
        setup = _SETUP[variant]
        faults = self._faults
        is_canary = variant == CANARY
        rng = random.Random(self._key("probe", variant))
        phase_ms = rng.randrange(_PROBE_PERIOD_MS)
        first_combo = rng.randrange(len(TOPICS) * QUESTIONS_PER_TOPIC * PARAPHRASES * PROBE_SEEDS)
        per_topic = QUESTIONS_PER_TOPIC * PARAPHRASES * PROBE_SEEDS
        for n in itertools.count():
            ts_ms = phase_ms + n * _PROBE_PERIOD_MS + rng.randrange(500)
            # Topics rotate fastest so each gets the same share of every minute.
            i = first_combo + n
            topic_index = i % len(TOPICS)
            j = (i // len(TOPICS)) % per_topic
            question = _question_id(topic_index, j % QUESTIONS_PER_TOPIC)
            paraphrase = (j // QUESTIONS_PER_TOPIC) % PARAPHRASES
            probe_seed = j // (QUESTIONS_PER_TOPIC * PARAPHRASES)
            topic = TOPICS[topic_index]
            region = REGIONS[n % len(REGIONS)]

            pop = rng.choice(_EDGE_POPS[region])
            tffb, tusable, tfinal = _warm_latency(rng)
            delta_s = _clip01(rng.gauss(0.30, 0.05))
            coverage_mean = faults.coverage_by_topic.get(topic, 0.80) if is_canary else 0.80
            coverage = _clip01(rng.gauss(coverage_mean, 0.05))
            ascii_keys = rng.random() < _ASCII_KEYS_FRACTION
            lambda_word = rng.random() < _LAMBDA_WORD_FRACTION
            state = "→"
            if is_canary and question in faults.flip_questions and probe_seed == 1:
                state = "<>"
            analyzer = setup.analyzer
            if is_canary:
                analyzer = faults.analyzer_by_region.get(region, analyzer)

            event: _Json = {
                "ts": self._ts(ts_ms),
                "route": _ANSWER,
                "variant": variant,
                "sticky": f"{setup.sticky_prefix}gold",
                "region": region,
                "edge_pop": pop,
                "cold_start": False,
                "x_exp": self._experiment,
                "request_id": f"{self._ids}{variant}-probe-{n:06d}",
                "latency_ms": _latency_block(tffb, tusable, tfinal),
                "status": 200,
                "retrieval": _retrieval(
                    setup,
                    analyzer=analyzer,
                    k=10,
                    delta_s=delta_s,
                    coverage=coverage,
                    state=state,
                    ascii_keys=ascii_keys,
                    lambda_word=lambda_word,
                ),
                "probe": {
                    "question_id": question,
                    "topic": topic,
                    "paraphrase": paraphrase,
                    "seed": probe_seed,
                },
            }
            yield (ts_ms, stream, n, _dumps(event))

    def _pings(self, stream: int, variant: str, region: str) -> Iterator[_Item]:
        setup = _SETUP[variant]
        factor = self._faults.ping_factor if variant == CANARY else 1.0
        rng = random.Random(self._key("ping", variant, region))
        phase_ms = rng.randrange(_PING_PERIOD_MS)
        for n in itertools.count():
            ts_ms = phase_ms + n * _PING_PERIOD_MS + rng.randrange(2000)
            tffb = rng.lognormvariate(math.log(15.0), 0.3) * factor
            tfinal = tffb + rng.lognormvariate(math.log(10.0), 0.3) * factor
            event: _Json = {
                "ts": self._ts(ts_ms),
                "route": _ANSWER,
                "variant": variant,
                "sticky": f"{setup.sticky_prefix}warmer",
                "region": region,
                "edge_pop": rng.choice(_EDGE_POPS[region]),
                "cold_start": False,
                "x_warm": True,
                "request_id": f"{self._ids}{variant}-{region}-warm-{n:06d}",
                "latency_ms": _latency_block(tffb, tffb, tfinal),
                "status": 200,
            }
            yield (ts_ms, stream, n, _dumps(event))


def _violate(event: _Json, rng: random.Random) -> bytes:
    """Break one event the way a buggy emitter would, keeping `variant` readable where JSON survives."""
    kind = rng.randrange(4)
    if kind == 0:
        # A message cut short: not JSON, although the variant is still in the text.
        text = _ENCODER.encode(event)
        return text[: len(text) * 3 // 5].encode("utf-8")
    broken = dict(event)
    if kind == 1:
        del broken["latency_ms"]
    elif kind == 2:
        broken["status"] = str(broken["status"])
    else:
        broken["cold_start"] = "yes"
    return _dumps(broken)
