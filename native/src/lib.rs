//! canary-gate's native micro-batch decoder: telemetry JSON lines -> Arrow columns of frame.SCHEMA.
//!
//! `decode_batch(lines, max_bytes)` reads a list of bytes.  Each line that the
//! strict reader of `parse.rs` accepts becomes one row of the columns (the
//! Event fields of `pipeline.frame.SCHEMA` plus `row`, its index in `lines`);
//! every other line's index is returned for `pipeline.decode.codec.decode`,
//! which gives the event or the dead letter.  Dictionary columns come as
//! UInt32 codes into a list of their distinct strings.  No Python object is
//! made per accepted line.

use std::collections::HashMap;
use std::ffi::CStr;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

mod arrow;
mod parse;

use arrow::{ArrowColumn, Bits, Buf, Column};

static FAST_LINES: AtomicU64 = AtomicU64::new(0);
static SLOW_LINES: AtomicU64 = AtomicU64::new(0);

/// FxHash (rustc's): a multiply-rotate hash, several times faster than SipHash on short labels.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A dictionary-encoded text column: codes into the distinct values, in order of first sight.
#[derive(Default)]
struct DictColumn {
    index: HashMap<Box<str>, u32, BuildHasherDefault<Fx>>,
    values: Vec<Box<str>>,
    codes: Vec<u32>,
    valid: Bits,
    last: u32, // the previous row's code: labels often repeat
}

impl DictColumn {
    #[inline]
    fn push(&mut self, value: Option<&str>) {
        let Some(v) = value else {
            self.codes.push(0);
            self.valid.push(false);
            return;
        };
        let code = if !self.values.is_empty() && &*self.values[self.last as usize] == v {
            self.last
        } else if let Some(&c) = self.index.get(v) {
            c
        } else {
            let c = self.values.len() as u32;
            self.values.push(v.into());
            self.index.insert(v.into(), c);
            c
        };
        self.last = code;
        self.codes.push(code);
        self.valid.push(true);
    }

    /// A dictionary array: UInt32 codes into LargeUtf8 values (polars reads it as Categorical).
    fn export(self) -> Column {
        let mut values = StrColumn::new();
        for v in &self.values {
            values.push(Some(v));
        }
        let mut values = values.export();
        values.validity = None;
        let length = self.codes.len();
        Column {
            format: c"I",
            length,
            validity: Some(self.valid),
            buffers: vec![Buf::U32(self.codes)],
            dictionary: Some(Box::new(values)),
        }
    }
}

/// A text column (LargeUtf8).
struct StrColumn {
    offsets: Vec<i64>,
    data: Vec<u8>,
    valid: Bits,
}

impl StrColumn {
    fn new() -> Self {
        StrColumn { offsets: vec![0], data: Vec::new(), valid: Bits::default() }
    }

    #[inline]
    fn push(&mut self, value: Option<&str>) {
        if let Some(v) = value {
            self.data.extend_from_slice(v.as_bytes());
        }
        self.offsets.push(self.data.len() as i64);
        self.valid.push(value.is_some());
    }

    fn export(self) -> Column {
        let length = self.offsets.len() - 1;
        Column {
            format: c"U",
            length,
            validity: Some(self.valid),
            buffers: vec![Buf::I64(self.offsets), Buf::U8(self.data)],
            dictionary: None,
        }
    }
}

fn floats(values: Vec<f64>, valid: Option<Bits>) -> Column {
    Column { format: c"g", length: values.len(), validity: valid, buffers: vec![Buf::F64(values)], dictionary: None }
}

fn ints(values: Vec<i64>) -> Column {
    Column { format: c"l", length: values.len(), validity: None, buffers: vec![Buf::I64(values)], dictionary: None }
}

fn bools(values: Bits, valid: Option<Bits>) -> Column {
    let length = values.len();
    Column { format: c"b", length, validity: valid, buffers: vec![values.into_buf()], dictionary: None }
}

/// The accepted rows, column by column, in frame.SCHEMA's order.
#[derive(Default)]
struct Columns {
    ts: Vec<f64>,
    route: DictColumn,
    variant: DictColumn,
    sticky: Option<StrColumn>,
    region: DictColumn,
    cold_start: Bits,
    x_warm: Bits,
    request_id: Option<StrColumn>,
    tffb: Vec<f64>,
    tusable: Vec<f64>,
    tfinal: Vec<f64>,
    status: Vec<i64>,
    failure_phase: DictColumn,
    has_retrieval: Bits,
    index_hash: DictColumn,
    metric: DictColumn,
    analyzer: DictColumn,
    delta_s: Vec<f64>,
    delta_s_valid: Bits,
    coverage: Vec<f64>,
    coverage_valid: Bits,
    lambda_state: Vec<i8>,
    probe_question: DictColumn,
    probe_topic: DictColumn,
    probe_paraphrase: Vec<i64>,
    probe_seed: Vec<i64>,
    cache_prefix: DictColumn,
    cache_hit: Bits,
    cache_hit_valid: Bits,
    x_exp: DictColumn,
    row: Vec<i64>,
}

impl Columns {
    fn push(&mut self, r: &parse::Row<'_>, row: usize) {
        self.ts.push(r.ts);
        self.route.push(Some(&r.route));
        self.variant.push(Some(&r.variant));
        self.sticky.as_mut().unwrap().push(Some(&r.sticky));
        self.region.push(Some(&r.region));
        self.cold_start.push(r.cold_start);
        self.x_warm.push(r.x_warm);
        self.request_id.as_mut().unwrap().push(r.request_id.as_deref());
        self.tffb.push(r.latency[0]);
        self.tusable.push(r.latency[1]);
        self.tfinal.push(r.latency[2]);
        self.status.push(r.status);
        self.failure_phase.push(r.failure_phase);
        let retrieval = r.retrieval.as_ref();
        self.has_retrieval.push(retrieval.is_some());
        self.index_hash.push(retrieval.and_then(|x| x.index_hash.as_deref()));
        self.metric.push(retrieval.and_then(|x| x.metric.as_deref()));
        self.analyzer.push(retrieval.and_then(|x| x.analyzer.as_deref()));
        let delta_s = retrieval.and_then(|x| x.delta_s);
        self.delta_s.push(delta_s.unwrap_or(0.0));
        self.delta_s_valid.push(delta_s.is_some());
        let coverage = retrieval.and_then(|x| x.coverage);
        self.coverage.push(coverage.unwrap_or(0.0));
        self.coverage_valid.push(coverage.is_some());
        self.lambda_state.push(retrieval.and_then(|x| x.lambda).unwrap_or(-1));
        let probe = r.probe.as_ref();
        self.probe_question.push(probe.map(|x| x.question.as_ref()));
        self.probe_topic.push(probe.map(|x| x.topic.as_ref()));
        self.probe_paraphrase.push(probe.map_or(0, |x| x.paraphrase));
        self.probe_seed.push(probe.map_or(0, |x| x.seed));
        let cache = r.cache.as_ref();
        self.cache_prefix.push(cache.map(|x| x.prefix.as_ref()));
        self.cache_hit.push(cache.is_some_and(|x| x.hit));
        self.cache_hit_valid.push(cache.is_some());
        self.x_exp.push(r.x_exp.as_deref());
        self.row.push(row as i64);
    }
}

/// The message of a list item, when it is bytes within max_bytes and UTF-8 (else: the codec's).
unsafe fn line_text<'a>(item: *mut ffi::PyObject, max_bytes: usize) -> Option<&'a str> {
    if ffi::PyBytes_Check(item) == 0 {
        return None;
    }
    let len = ffi::PyBytes_Size(item) as usize;
    if len > max_bytes {
        return None;
    }
    let data = ffi::PyBytes_AsString(item) as *const u8;
    std::str::from_utf8(std::slice::from_raw_parts(data, len)).ok()
}

/// Decode a micro-batch: (columns, categories, slow).
///
/// `columns` is a list of (name, column) in frame.SCHEMA's order, each
/// column exported through `__arrow_c_array__`; a dictionary column is UInt32
/// codes and `categories[name]` its distinct strings.  `slow` lists the
/// indices of the lines left to `codec.decode`, ascending.
#[pyfunction]
#[pyo3(signature = (lines, max_bytes=1_048_576))]
fn decode_batch<'py>(py: Python<'py>, lines: &Bound<'py, PyList>, max_bytes: usize) -> PyResult<Bound<'py, PyTuple>> {
    let n = lines.len();
    let mut c = Columns { sticky: Some(StrColumn::new()), request_id: Some(StrColumn::new()), ..Default::default() };
    c.ts.reserve(n);
    c.row.reserve(n);
    let mut slow: Vec<usize> = Vec::new();
    let list = lines.as_ptr();
    for i in 0..n {
        // The list is not resized while this runs: the GIL is held and no Python code runs.
        let row = unsafe {
            let item = ffi::PyList_GET_ITEM(list, i as ffi::Py_ssize_t);
            line_text(item, max_bytes).and_then(parse::message)
        };
        match row {
            Some(r) => c.push(&r, i),
            None => slow.push(i),
        }
    }
    FAST_LINES.fetch_add((n - slow.len()) as u64, Ordering::Relaxed);
    SLOW_LINES.fetch_add(slow.len() as u64, Ordering::Relaxed);

    let mut columns: Vec<(&'static str, Column)> = Vec::with_capacity(28);
    let dict = |name: &'static str, d: DictColumn, columns: &mut Vec<(&'static str, Column)>| -> PyResult<()> {
        columns.push((name, d.export()));
        Ok(())
    };
    columns.push(("ts", floats(c.ts, None)));
    dict("route", c.route, &mut columns)?;
    dict("variant", c.variant, &mut columns)?;
    columns.push(("sticky", c.sticky.take().unwrap().export()));
    dict("region", c.region, &mut columns)?;
    columns.push(("cold_start", bools(c.cold_start, None)));
    columns.push(("x_warm", bools(c.x_warm, None)));
    columns.push(("request_id", c.request_id.take().unwrap().export()));
    columns.push(("tffb", floats(c.tffb, None)));
    columns.push(("tusable", floats(c.tusable, None)));
    columns.push(("tfinal", floats(c.tfinal, None)));
    columns.push(("status", ints(c.status)));
    dict("failure_phase", c.failure_phase, &mut columns)?;
    columns.push(("has_retrieval", bools(c.has_retrieval, None)));
    dict("index_hash", c.index_hash, &mut columns)?;
    dict("metric", c.metric, &mut columns)?;
    dict("analyzer", c.analyzer, &mut columns)?;
    columns.push(("delta_s", floats(c.delta_s, Some(c.delta_s_valid))));
    columns.push(("coverage", floats(c.coverage, Some(c.coverage_valid))));
    let length = c.lambda_state.len();
    columns.push(("lambda_state", Column { format: c"c", length, validity: None, buffers: vec![Buf::I8(c.lambda_state)], dictionary: None }));
    dict("probe_question", c.probe_question, &mut columns)?;
    dict("probe_topic", c.probe_topic, &mut columns)?;
    columns.push(("probe_paraphrase", ints(c.probe_paraphrase)));
    columns.push(("probe_seed", ints(c.probe_seed)));
    dict("cache_prefix", c.cache_prefix, &mut columns)?;
    columns.push(("cache_hit", bools(c.cache_hit, Some(c.cache_hit_valid))));
    dict("x_exp", c.x_exp, &mut columns)?;
    columns.push(("row", ints(c.row)));

    let exported = PyList::empty(py);
    for (name, column) in columns {
        exported.append((name, Bound::new(py, ArrowColumn::new(column))?))?;
    }
    let slow = PyList::new(py, slow)?;
    PyTuple::new(py, [exported.into_any(), slow.into_any()])
}

/// (lines decoded natively, lines left to the codec) since the module was loaded.
#[pyfunction]
fn counters() -> (u64, u64) {
    (FAST_LINES.load(Ordering::Relaxed), SLOW_LINES.load(Ordering::Relaxed))
}

/// Event time of RFC 3339 text as the native reader computes it (None: it leaves the text to the codec).
#[pyfunction]
fn parse_ts(text: &str) -> Option<f64> {
    parse::parse_ts(text.as_bytes())
}

/// The constants the reader holds besides the structure: for tests against pipeline.decode.rules.
#[pyfunction]
fn constants(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    let lambda = PyList::new(py, parse::LAMBDA.iter().map(|(w, c)| (*w, *c)))?;
    let phases = PyList::new(py, parse::PHASES)?;
    PyTuple::new(py, [lambda.into_any(), phases.into_any(), parse::STATUS_RANGE.into_pyobject(py)?.into_any()])
}

const _: &CStr = c"";

#[pymodule]
fn canary_gate_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(counters, m)?)?;
    m.add_function(wrap_pyfunction!(parse_ts, m)?)?;
    m.add_function(wrap_pyfunction!(constants, m)?)?;
    m.add_class::<ArrowColumn>()?;
    Ok(())
}
