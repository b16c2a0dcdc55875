//! A strict, conservative reader of one telemetry message.
//!
//! `message` returns a `Row` only when `pipeline.decode.codec.decode` certainly
//! accepts the line and yields exactly these values; anything else (invalid
//! or unusual JSON, a schema error, a number or escape it is not sure about)
//! returns None and the line takes the codec's path.  The rules mirrored here
//! are `pipeline/decode/rules.py`'s; tests/test_native_decode.py holds the two
//! to the same answers on arbitrary input.

use std::borrow::Cow;

/// JSON whitespace (RFC 8259): space, tab, LF, CR.
const fn ws_table() -> [bool; 256] {
    let mut t = [false; 256];
    t[b' ' as usize] = true;
    t[b'\t' as usize] = true;
    t[b'\n' as usize] = true;
    t[b'\r' as usize] = true;
    t
}
static WS: [bool; 256] = ws_table();

/// Bytes that end the plain run of a string: the closing quote, an escape, a control character.
const fn stop_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
}
static STOP: [bool; 256] = stop_table();

/// The index of the first byte at or after `i` that ends a string's plain run (STOP), or b.len().
///
/// Eight bytes at a time (SWAR): a byte equal to '"' or '\\', or below 0x20, sets the high
/// bit of its lane; a false positive can only follow a true one, so the lowest set bit is
/// the first such byte.
#[inline]
fn plain_run(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while i + 8 <= b.len() {
        let x = u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        let hits = (quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash)
            | (x.wrapping_sub(ONES * 0x20) & !x);
        let hits = hits & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !STOP[b[i] as usize] {
        i += 1;
    }
    i
}

const MAX_SKIP_DEPTH: u32 = 32; // deeper unknown values go to the codec (it bounds nesting itself)
const MAX_NUMBER_LEN: usize = 40; // longer number tokens go to the codec
const TWO_63: f64 = 9_223_372_036_854_775_808.0; // 2**63

pub const LAMBDA: [(&str, i8); 8] = [
    ("→", 0), ("←", 1), ("<>", 2), ("×", 3),
    ("convergent", 0), ("divergent", 1), ("recursive", 2), ("chaotic", 3),
];
pub const STATUS_RANGE: (i64, i64) = (100, 599);
pub const PHASES: [&str; 2] = ["headers", "body"];

#[derive(Default)]
pub struct Retrieval<'a> {
    pub index_hash: Option<Cow<'a, str>>,
    pub metric: Option<Cow<'a, str>>,
    pub analyzer: Option<Cow<'a, str>>,
    pub delta_s: Option<f64>,
    pub coverage: Option<f64>,
    pub lambda: Option<i8>,
}

pub struct Probe<'a> {
    pub question: Cow<'a, str>,
    pub topic: Cow<'a, str>,
    pub paraphrase: i64,
    pub seed: i64,
}

pub struct Cache<'a> {
    pub prefix: Cow<'a, str>,
    pub hit: bool,
}

/// The Event of one accepted message (strings borrowed from the line unless they had escapes).
pub struct Row<'a> {
    pub ts: f64,
    pub route: Cow<'a, str>,
    pub variant: Cow<'a, str>,
    pub sticky: Cow<'a, str>,
    pub region: Cow<'a, str>,
    pub cold_start: bool,
    pub x_warm: bool,
    pub request_id: Option<Cow<'a, str>>,
    pub latency: [f64; 3],
    pub status: i64,
    pub failure_phase: Option<&'static str>,
    pub retrieval: Option<Retrieval<'a>>,
    pub probe: Option<Probe<'a>>,
    pub cache: Option<Cache<'a>>,
    pub x_exp: Option<Cow<'a, str>>,
}

struct Num<'a> {
    text: &'a str,
    integer: bool, // no fraction, no exponent
    exp_digits: usize,
}

struct Parser<'a> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Parser<'a> {
    #[inline]
    fn ws(&mut self) {
        while self.i < self.b.len() && WS[self.b[self.i] as usize] {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> u8 {
        if self.i < self.b.len() {
            self.b[self.i]
        } else {
            0
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        if self.peek() == c {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string value, its escapes decoded; None when not a string or not certain.
    #[inline]
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.ws();
        if self.peek() != b'"' {
            return None;
        }
        let start = self.i + 1;
        let i = plain_run(self.b, start);
        if i < self.b.len() && self.b[i] == b'"' {
            self.i = i + 1;
            return Some(Cow::Borrowed(&self.text[start..i])); // quotes are ASCII: char boundaries
        }
        let mut out = String::from(&self.text[start..i]);
        self.i = i;
        loop {
            let c = self.peek();
            match c {
                b'"' => {
                    self.i += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    self.i += 1;
                    let e = self.peek();
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if self.peek() != b'\\' {
                                    return None;
                                }
                                self.i += 1;
                                if self.peek() != b'u' {
                                    return None;
                                }
                                self.i += 1;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return None; // a lone low surrogate
                            } else {
                                hi
                            };
                            out.push(char::from_u32(code)?);
                        }
                        _ => return None,
                    }
                }
                0 if self.i >= self.b.len() => return None,
                _ => {
                    let s = self.i;
                    let j = plain_run(self.b, s);
                    if j == s {
                        return None; // a control character
                    }
                    out.push_str(&self.text[s..j]);
                    self.i = j;
                }
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        if self.i + 4 > self.b.len() {
            return None;
        }
        let mut v = 0u32;
        for k in 0..4 {
            let d = (self.b[self.i + k] as char).to_digit(16)?;
            v = v * 16 + d;
        }
        self.i += 4;
        Some(v)
    }

    /// A JSON number token (RFC 8259 grammar).
    #[inline]
    fn number(&mut self) -> Option<Num<'a>> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let mut i = start;
        if i < b.len() && b[i] == b'-' {
            i += 1;
        }
        if i < b.len() && b[i] == b'0' {
            i += 1;
        } else if i < b.len() && b[i].is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        } else {
            return None;
        }
        let mut integer = true;
        if i < b.len() && b[i] == b'.' {
            integer = false;
            i += 1;
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == s {
                return None;
            }
        }
        let mut exp_digits = 0;
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            integer = false;
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            exp_digits = i - s;
            if exp_digits == 0 {
                return None;
            }
        }
        if i - start > MAX_NUMBER_LEN {
            return None;
        }
        self.i = i;
        Some(Num { text: &self.text[start..i], integer, exp_digits })
    }

    /// A number the codec reads as a float (msgspec: correctly rounded, as Rust's parse).
    #[inline]
    fn float(&mut self) -> Option<f64> {
        let n = self.number()?;
        float_of(&n)
    }

    /// An integer field's value when it fits signed 64 bits: an integer token, or an integral
    /// float (the codec's `int(value)`, exact for every integral double in range).
    #[inline]
    fn int(&mut self) -> Option<i64> {
        let n = self.number()?;
        if n.integer {
            return n.text.parse::<i64>().ok(); // beyond 64 bits: the codec's
        }
        let v = float_of(&n)?;
        if v.fract() != 0.0 || !(-TWO_63..TWO_63).contains(&v) {
            return None;
        }
        Some(v as i64)
    }

    /// An unbounded integer field the Event does not keep (k, tries): any integer token, or an
    /// integral float (the codec's `int | float`, then its integral check).
    fn integral(&mut self) -> Option<()> {
        let n = self.number()?;
        if n.integer {
            return Some(());
        }
        (float_of(&n)?.fract() == 0.0).then_some(())
    }

    #[inline]
    fn boolean(&mut self) -> Option<bool> {
        self.ws();
        let rest = &self.b[self.i..];
        if rest.starts_with(b"true") {
            self.i += 4;
            Some(true)
        } else if rest.starts_with(b"false") {
            self.i += 5;
            Some(false)
        } else {
            None
        }
    }

    /// Skips any JSON value the codec certainly accepts and ignores.
    fn skip(&mut self, depth: u32) -> Option<()> {
        self.ws();
        match self.peek() {
            b'"' => self.string().map(|_| ()),
            b'{' => {
                if depth >= MAX_SKIP_DEPTH {
                    return None;
                }
                self.i += 1;
                self.ws();
                if self.peek() == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.eat(b':')?;
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                if depth >= MAX_SKIP_DEPTH {
                    return None;
                }
                self.i += 1;
                self.ws();
                if self.peek() == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b't' | b'f' => self.boolean().map(|_| ()),
            b'n' => {
                if self.b[self.i..].starts_with(b"null") {
                    self.i += 4;
                    Some(())
                } else {
                    None
                }
            }
            _ => self.number().map(|_| ()), // the codec skips a number unconverted: any size
        }
    }

    /// The fields of an object, each handed to `field` with its key; `seen` catches repeated keys.
    #[inline]
    fn object<F>(&mut self, mut field: F) -> Option<()>
    where
        F: FnMut(&mut Self, &[u8]) -> Option<()>,
    {
        self.eat(b'{')?;
        self.ws();
        if self.peek() == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?; // escapes decoded: the codec matches "\\u0073tatus" as status
            self.eat(b':')?;
            field(self, key.as_bytes())?;
            self.ws();
            match self.peek() {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

fn float_of(n: &Num<'_>) -> Option<f64> {
    if n.integer {
        let digits = n.text.len() - usize::from(n.text.starts_with('-'));
        if digits <= 15 {
            return Some(n.text.parse::<i64>().ok()? as f64); // exact
        }
        // beyond 2**53: the integer correctly rounded to a double, as the codec converts it
        let v: f64 = n.text.parse().ok()?;
        return v.is_finite().then_some(v);
    }
    if n.exp_digits > 3 {
        return None;
    }
    if let Some(v) = clinger(n.text.as_bytes()) {
        return Some(v);
    }
    let v: f64 = n.text.parse().ok()?;
    if !v.is_finite() || (v != 0.0 && v.abs() < f64::MIN_POSITIVE) {
        return None; // out of range, or subnormal: the codec's answer
    }
    Some(v)
}

static POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
    1e20, 1e21, 1e22,
];

/// A decimal with at most 15 digits and a power of ten within 10**22: both are exact
/// doubles, so one IEEE multiplication or division is the correctly rounded value
/// (Clinger's fast path), as the full parse would give.  None: not that simple.
#[inline]
fn clinger(t: &[u8]) -> Option<f64> {
    let (neg, t) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        _ => (false, t),
    };
    let mut m: u64 = 0;
    let mut digits = 0;
    let mut scale: i32 = 0;
    let mut i = 0;
    let mut fraction = false;
    while i < t.len() {
        let c = t[i];
        if c.is_ascii_digit() {
            m = m * 10 + u64::from(c - b'0');
            digits += 1;
            if digits > 15 {
                return None;
            }
            if fraction {
                scale -= 1;
            }
        } else if c == b'.' {
            fraction = true;
        } else {
            break;
        }
        i += 1;
    }
    if i < t.len() {
        // an exponent: [eE][+-]?digits, at most 3 digits (checked by the caller)
        i += 1;
        let sign = match t.get(i) {
            Some(b'-') => {
                i += 1;
                -1
            }
            Some(b'+') => {
                i += 1;
                1
            }
            _ => 1,
        };
        let mut e: i32 = 0;
        while i < t.len() {
            e = e * 10 + i32::from(t[i] - b'0');
            i += 1;
        }
        scale += sign * e;
    }
    if !(-22..=22).contains(&scale) {
        return None;
    }
    let mut v = m as f64;
    if scale >= 0 {
        v *= POW10[scale as usize];
        if v >= 9_007_199_254_740_992.0 {
            return None; // the product was rounded: beyond Clinger's exact range
        }
    } else {
        v /= POW10[(-scale) as usize];
    }
    Some(if neg { -v } else { v })
}

#[inline]
fn once(seen: &mut u32, bit: u32) -> Option<()> {
    if *seen & bit != 0 {
        return None; // a repeated key: the codec's reading
    }
    *seen |= bit;
    Some(())
}

#[inline]
fn label<'a>(p: &mut Parser<'a>) -> Option<Cow<'a, str>> {
    let s = p.string()?;
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

fn unit(p: &mut Parser<'_>) -> Option<f64> {
    let v = p.float()?;
    (0.0..=1.0).contains(&v).then_some(v)
}

fn lambda(p: &mut Parser<'_>) -> Option<i8> {
    let s = p.string()?;
    LAMBDA.iter().find(|(w, _)| *w == s.as_ref()).map(|(_, c)| *c)
}

fn retrieval<'a>(p: &mut Parser<'a>) -> Option<Retrieval<'a>> {
    let mut r = Retrieval::default();
    let mut seen = 0u32;
    p.object(|p, key| {
        match key {
            b"k" => {
                once(&mut seen, 1)?;
                p.integral()?;
            }
            b"metric" => {
                once(&mut seen, 2)?;
                r.metric = Some(p.string()?);
            }
            b"analyzer" => {
                once(&mut seen, 4)?;
                r.analyzer = Some(p.string()?);
            }
            b"INDEX_HASH" | b"index_hash" => {
                once(&mut seen, 8)?; // an alias beside its canonical field too
                r.index_hash = Some(p.string()?);
            }
            b"\xce\x94S_q_r" | b"delta_s_q_r" => {
                once(&mut seen, 16)?;
                r.delta_s = Some(unit(p)?);
            }
            b"coverage" => {
                once(&mut seen, 32)?;
                r.coverage = Some(unit(p)?);
            }
            b"\xce\xbb_state" | b"lambda_state" => {
                once(&mut seen, 64)?;
                r.lambda = Some(lambda(p)?);
            }
            _ => p.skip(0)?,
        }
        Some(())
    })?;
    Some(r)
}

fn probe<'a>(p: &mut Parser<'a>) -> Option<Probe<'a>> {
    let (mut question, mut topic, mut paraphrase, mut seed) = (None, None, None, None);
    p.object(|p, key| {
        match key {
            b"question_id" if question.is_none() => question = Some(p.string()?),
            b"topic" if topic.is_none() => topic = Some(p.string()?),
            b"paraphrase" if paraphrase.is_none() => paraphrase = Some(p.int()?),
            b"seed" if seed.is_none() => seed = Some(p.int()?),
            b"question_id" | b"topic" | b"paraphrase" | b"seed" => return None,
            _ => p.skip(0)?,
        }
        Some(())
    })?;
    Some(Probe { question: question?, topic: topic?, paraphrase: paraphrase?, seed: seed? })
}

fn cache<'a>(p: &mut Parser<'a>) -> Option<Cache<'a>> {
    let (mut prefix, mut hit) = (None, None);
    p.object(|p, key| {
        match key {
            b"prefix" if prefix.is_none() => prefix = Some(p.string()?),
            b"hit" if hit.is_none() => hit = Some(p.boolean()?),
            b"prefix" | b"hit" => return None,
            _ => p.skip(0)?,
        }
        Some(())
    })?;
    Some(Cache { prefix: prefix?, hit: hit? })
}

fn egress(p: &mut Parser<'_>) -> Option<()> {
    let mut seen = 0u32;
    p.object(|p, key| {
        match key {
            b"webhook" => {
                once(&mut seen, 1)?;
                p.string()?;
            }
            b"tries" => {
                once(&mut seen, 2)?;
                p.integral()?;
            }
            b"dedupe_key" => {
                once(&mut seen, 4)?;
                p.string()?;
            }
            _ => p.skip(0)?,
        }
        Some(())
    })
}

fn latency(p: &mut Parser<'_>) -> Option<[f64; 3]> {
    let mut out = [f64::NAN; 3];
    let mut seen = 0u32;
    p.object(|p, key| {
        let at = match key {
            b"tffb" => 0,
            b"tusable" => 1,
            b"tfinal" => 2,
            _ => return p.skip(0),
        };
        once(&mut seen, 1 << at)?;
        let v = p.float()?;
        if !(v >= 0.0) {
            return None;
        }
        out[at] = v;
        Some(())
    })?;
    (seen == 7).then_some(out)
}

/// Event time of RFC 3339 text exactly as `timestamps.parse_ts` computes it, or None.
///
/// parse_ts is `datetime.fromisoformat(text.upper()).timestamp()`: the microseconds since
/// the epoch (fraction cut after 6 digits, offset subtracted) divided by 10**6, correctly
/// rounded; below 2**53 microseconds that is one IEEE division of exact operands.
pub fn parse_ts(t: &[u8]) -> Option<f64> {
    fn two(t: &[u8], at: usize) -> Option<i64> {
        let (a, b) = (t[at], t[at + 1]);
        if a.is_ascii_digit() && b.is_ascii_digit() {
            Some(i64::from(a - b'0') * 10 + i64::from(b - b'0'))
        } else {
            None
        }
    }
    if t.len() < 20 {
        return None;
    }
    if t[4] != b'-' || t[7] != b'-' || !(t[10] == b'T' || t[10] == b't') || t[13] != b':' || t[16] != b':' {
        return None;
    }
    let year = two(t, 0)? * 100 + two(t, 2)?;
    let (month, day) = (two(t, 5)?, two(t, 8)?);
    let (hour, minute, second) = (two(t, 11)?, two(t, 14)?, two(t, 17)?);
    let mut i = 19;
    let mut micros = 0i64;
    if t[i] == b'.' {
        i += 1;
        let s = i;
        while i < t.len() && t[i].is_ascii_digit() {
            if i - s < 6 {
                micros = micros * 10 + i64::from(t[i] - b'0');
            }
            i += 1;
        }
        if i == s {
            return None;
        }
        for _ in (i - s)..6 {
            micros *= 10;
        }
    }
    let offset = match t.get(i)? {
        b'Z' | b'z' if i + 1 == t.len() => 0,
        b'+' | b'-' if i + 6 == t.len() && t[i + 3] == b':' => {
            let (h, m) = (two(t, i + 1)?, two(t, i + 4)?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = (h * 60 + m) * 60;
            if t[i] == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 => 28 + i64::from(leap),
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59
    {
        return None;
    }
    // days_from_civil (H. Hinnant), years >= 1
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let total = seconds * 1_000_000 + micros;
    if total.unsigned_abs() < 1u64 << 53 {
        return Some(total as f64 / 1e6); // both exact: one correctly rounded division
    }
    let seconds = micros_to_seconds(total.unsigned_abs())?;
    Some(if total < 0 { -seconds } else { seconds })
}

/// `n / 10**6` correctly rounded (ties to even), as Python's int / int, for n below 2**62.
///
/// Starts from the float division (a few ulps off at most once n has more than 53
/// bits) and moves to the neighbour while `n / 10**6` lies beyond a midpoint,
/// comparing exactly in 128-bit integers.
fn micros_to_seconds(n: u64) -> Option<f64> {
    const D: u128 = 1_000_000;
    if n >= 1u64 << 62 {
        return None;
    }
    // n / D against mant * 2**exp: the sign of n * 2**-exp - D * mant (exp is negative here).
    let cmp = |mant: u128, exp: i32| -> Option<std::cmp::Ordering> {
        if !(-100..=0).contains(&exp) {
            return None;
        }
        Some((u128::from(n) << (-exp) as u32).cmp(&(D * mant)))
    };
    let mut r = n as f64 / 1e6;
    for _ in 0..4 {
        let bits = r.to_bits();
        let m = u128::from((bits & ((1u64 << 52) - 1)) | (1u64 << 52));
        let e = ((bits >> 52) & 0x7ff) as i32 - 1075;
        let even = m % 2 == 0;
        match cmp(2 * m + 1, e - 1)? {
            std::cmp::Ordering::Greater => {
                r = f64::from_bits(bits + 1);
                continue;
            }
            std::cmp::Ordering::Equal => return Some(if even { r } else { f64::from_bits(bits + 1) }),
            std::cmp::Ordering::Less => {}
        }
        let lower = if m == 1u128 << 52 { cmp(4 * m - 1, e - 2)? } else { cmp(2 * m - 1, e - 1)? };
        match lower {
            std::cmp::Ordering::Less => r = f64::from_bits(bits - 1),
            std::cmp::Ordering::Equal => return Some(if even { r } else { f64::from_bits(bits - 1) }),
            std::cmp::Ordering::Greater => return Some(r),
        }
    }
    None
}

/// The Event of one message, or None: the codec decides.
pub fn message(text: &str) -> Option<Row<'_>> {
    let mut p = Parser { b: text.as_bytes(), text, i: 0 };
    let mut seen = 0u32;
    let mut ts = None;
    let (mut route, mut variant, mut sticky, mut region) = (None, None, None, None);
    let (mut cold_start, mut x_warm, mut request_id) = (None, false, None);
    let (mut lat, mut status, mut phase) = (None, None, None);
    let (mut retr, mut prob, mut cach) = (None, None, None);
    let mut x_exp = None;
    p.object(|p, key| {
        match key {
            b"ts" => {
                once(&mut seen, 1)?;
                ts = Some(parse_ts(p.string()?.as_bytes())?);
            }
            b"route" => {
                once(&mut seen, 2)?;
                route = Some(label(p)?);
            }
            b"variant" => {
                once(&mut seen, 4)?;
                variant = Some(label(p)?);
            }
            b"sticky" => {
                once(&mut seen, 8)?;
                sticky = Some(label(p)?);
            }
            b"region" => {
                once(&mut seen, 16)?;
                region = Some(label(p)?);
            }
            b"edge_pop" => {
                once(&mut seen, 32)?;
                p.string()?;
            }
            b"x_exp" => {
                once(&mut seen, 64)?;
                x_exp = Some(p.string()?);
            }
            b"request_id" => {
                once(&mut seen, 128)?;
                request_id = Some(p.string()?);
            }
            b"cold_start" => {
                once(&mut seen, 256)?;
                cold_start = Some(p.boolean()?);
            }
            b"x_warm" => {
                once(&mut seen, 512)?;
                x_warm = p.boolean()?;
            }
            b"latency_ms" => {
                once(&mut seen, 1024)?;
                lat = Some(latency(p)?);
            }
            b"status" => {
                once(&mut seen, 2048)?;
                let s = p.int()?;
                if !(STATUS_RANGE.0..=STATUS_RANGE.1).contains(&s) {
                    return None;
                }
                status = Some(s);
            }
            b"failure_phase" => {
                once(&mut seen, 4096)?;
                let s = p.string()?;
                phase = Some(*PHASES.iter().find(|w| **w == s.as_ref())?);
            }
            b"retrieval" => {
                once(&mut seen, 8192)?;
                retr = Some(retrieval(p)?);
            }
            b"probe" => {
                once(&mut seen, 16384)?;
                prob = Some(probe(p)?);
            }
            b"cache" => {
                once(&mut seen, 32768)?;
                cach = Some(cache(p)?);
            }
            b"egress" => {
                once(&mut seen, 65536)?;
                egress(p)?;
            }
            _ => p.skip(0)?,
        }
        Some(())
    })?;
    p.ws();
    if p.i != p.b.len() {
        return None;
    }
    Some(Row {
        ts: ts?,
        route: route?,
        variant: variant?,
        sticky: sticky?,
        region: region?,
        cold_start: cold_start?,
        x_warm,
        request_id,
        latency: lat?,
        status: status?,
        failure_phase: phase,
        retrieval: retr,
        probe: prob,
        cache: cach,
        x_exp,
    })
}
