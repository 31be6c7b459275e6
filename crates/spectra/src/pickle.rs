//! Python pickles of SPARCL retrieve answers, written as a stream.
//!
//! The SPARCL client (`sparclclient`) runs `pickle.load` on the answer to `/spectras/`, a
//! list `[header, record, record, ...]` of dicts whose spectrum fields are `numpy.ndarray`s.
//! [`Encoder`] writes that list one element at a time, so a server can send the bytes in
//! chunks ([`Encoder::take`]) and a retrieve of 24,000 spectra (several GB) never sits in
//! memory whole.
//!
//! The encoding is the one of `shared/specs/sparcl-wire.md` section 6, verified on numpy
//! 1.26 and 2.x: protocol 3; `EMPTY_LIST`/`EMPTY_DICT` then `MARK` … `APPENDS`/`SETITEMS`
//! in batches of 1000 items, as CPython's pickler does; `BINUNICODE` for `str`; `BININT`
//! for integers that fit in 32 bits and `LONG1` for the others; `BINFLOAT` (big-endian
//! f64); `NONE`; `NEWTRUE`/`NEWFALSE`; `STOP`. An array is
//! `numpy.frombuffer(bytearray(<raw little-endian bytes>), '<f4')`, which loads as a
//! writable array and names no private numpy module (`numpy.core` became `numpy._core` in
//! numpy 2, which breaks numpy's own array pickles across versions). The two globals and
//! the dtype strings are written once and then fetched from the pickle memo (`BINPUT` /
//! `BINGET`).

use crate::{Error, Result};

/// One Python value to pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// A Python `int`.
    Int(i64),
    /// A Python `float`.
    Float(f64),
    /// A Python `str`.
    Str(&'a str),
    /// A `numpy.ndarray` of dtype `<f4`.
    F32(&'a [f32]),
    /// A `numpy.ndarray` of dtype `<f8`.
    F64(&'a [f64]),
    /// A `numpy.ndarray` of dtype `<f8` that repeats from record to record (a shared
    /// wavelength grid, recognised by the slice's address and length): its bytes are sent
    /// once and kept in the pickle memo, and each occurrence loads as an array of its own
    /// (`numpy.array(numpy.frombuffer(<bytes>, '<f8'))`, a writable copy). Past
    /// [`MAX_SHARED_BYTES`] of distinct grids the rest are sent as plain arrays.
    SharedF64(&'a [f64]),
    /// A `numpy.ndarray` of dtype `<u4`.
    U32(&'a [u32]),
    /// A `numpy.ndarray` of dtype `<i4`.
    I32(&'a [i32]),
    /// A `numpy.ndarray` of dtype `<i8`.
    I64(&'a [i64]),
    /// A Python `list`.
    List(Vec<Value<'a>>),
    /// A Python `dict` with `str` keys, in this order.
    Dict(Vec<(&'a str, Value<'a>)>),
}

// Opcodes (CPython's Lib/pickle.py).
const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const EMPTY_LIST: u8 = b']';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const SETITEMS: u8 = b'u';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const BINUNICODE: u8 = b'X';
const BINBYTES: u8 = b'B';
const GLOBAL: u8 = b'c';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const REDUCE: u8 = b'R';
const BINPUT: u8 = b'q';
const BINGET: u8 = b'h';
const LONG_BINPUT: u8 = b'r';
const LONG_BINGET: u8 = b'j';

/// The most bytes of distinct shared arrays kept in the pickle memo (the unpickler holds
/// them until the load ends).
pub const MAX_SHARED_BYTES: usize = 64 << 20;

/// Items per `MARK` … `APPENDS`/`SETITEMS` batch (CPython's `_BATCHSIZE`).
const BATCH: usize = 1000;

/// What the pickle memo holds, each written once: the two globals, then dtype strings.
#[derive(Clone, Copy)]
enum Memo {
    FromBuffer,
    ByteArray,
    F4,
    F8,
    U4,
    I4,
    I8,
    Array,
}

const N_MEMO: usize = 8;

impl Memo {
    /// The opcode and argument that push this object the first time.
    fn first_write(self, buf: &mut Vec<u8>) {
        match self {
            Memo::FromBuffer => {
                buf.push(GLOBAL);
                buf.extend_from_slice(b"numpy\nfrombuffer\n");
            }
            Memo::ByteArray => {
                buf.push(GLOBAL);
                buf.extend_from_slice(b"builtins\nbytearray\n");
            }
            Memo::F4 => write_str(buf, "<f4"),
            Memo::F8 => write_str(buf, "<f8"),
            Memo::U4 => write_str(buf, "<u4"),
            Memo::I4 => write_str(buf, "<i4"),
            Memo::I8 => write_str(buf, "<i8"),
            Memo::Array => {
                buf.push(GLOBAL);
                buf.extend_from_slice(b"numpy\narray\n");
            }
        }
    }
}

/// Writes a pickled Python list, one element at a time.
///
/// ```
/// use meridian_spectra::pickle::{Encoder, Value};
/// let mut e = Encoder::new();
/// e.push(&Value::Dict(vec![("status", Value::Bool(true))])).unwrap();
/// e.push(&Value::Dict(vec![("flux", Value::F32(&[1.0, 2.0]))])).unwrap();
/// let mut bytes = e.take(); // may be sent now
/// bytes.extend(e.finish());
/// assert_eq!(&bytes[..2], b"\x80\x03");
/// assert_eq!(bytes.last(), Some(&b'.'));
/// ```
#[derive(Debug)]
pub struct Encoder {
    buf: Vec<u8>,
    /// Memo index of each [`Memo`] object once written.
    memo: [Option<u32>; N_MEMO],
    next_memo: u32,
    /// Memo index of the bytes of each shared array sent, by (address, length).
    shared: std::collections::HashMap<(usize, usize), u32>,
    shared_bytes: usize,
    /// Whether a `MARK` for top-level items is open.
    mark_open: bool,
    /// Items of the top-level list since that `MARK`.
    batch: usize,
    /// The largest array or string, in bytes (`u32::MAX`; smaller in tests).
    max_object_bytes: u64,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// Starts a pickle of a list: writes `PROTO 3` and `EMPTY_LIST`.
    pub fn new() -> Self {
        Self {
            buf: vec![PROTO, 3, EMPTY_LIST],
            memo: [None; N_MEMO],
            next_memo: 0,
            shared: std::collections::HashMap::new(),
            shared_bytes: 0,
            mark_open: false,
            batch: 0,
            max_object_bytes: u32::MAX.into(),
        }
    }

    /// Appends `item` to the list.
    ///
    /// Fails with [`Error::TooLarge`], writing nothing, when an array or a string in `item`
    /// is 4 GiB or more (pickle protocol 3 has no larger `bytes` or `str`).
    pub fn push(&mut self, item: &Value) -> Result<()> {
        check(item, self.max_object_bytes)?;
        if !self.mark_open {
            self.buf.push(MARK);
            self.mark_open = true;
        }
        self.write(item);
        self.batch += 1;
        if self.batch == BATCH {
            self.buf.push(APPENDS);
            self.mark_open = false;
            self.batch = 0;
        }
        Ok(())
    }

    /// Bytes written and not yet taken.
    pub fn buffer_len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes written since the last `take`, to be sent; the buffer is left empty.
    pub fn take(&mut self) -> Vec<u8> {
        let keep = self.buf.capacity().min(8 << 20);
        std::mem::replace(&mut self.buf, Vec::with_capacity(keep))
    }

    /// Closes the list and the pickle: the remaining bytes.
    pub fn finish(mut self) -> Vec<u8> {
        if self.mark_open {
            self.buf.push(APPENDS);
        }
        self.buf.push(STOP);
        self.buf
    }

    /// Writes `v`, whose sizes [`check`] accepted.
    fn write(&mut self, v: &Value) {
        match v {
            Value::None => self.buf.push(NONE),
            Value::Bool(b) => self.buf.push(if *b { NEWTRUE } else { NEWFALSE }),
            Value::Int(i) => write_int(&mut self.buf, *i),
            Value::Float(x) => {
                self.buf.push(BINFLOAT);
                self.buf.extend_from_slice(&x.to_be_bytes());
            }
            Value::Str(s) => write_str(&mut self.buf, s),
            Value::F32(a) => self.write_array(a, Memo::F4, |x| x.to_le_bytes()),
            Value::F64(a) => self.write_array(a, Memo::F8, |x| x.to_le_bytes()),
            Value::SharedF64(a) => self.write_shared_f64(a),
            Value::U32(a) => self.write_array(a, Memo::U4, |x| x.to_le_bytes()),
            Value::I32(a) => self.write_array(a, Memo::I4, |x| x.to_le_bytes()),
            Value::I64(a) => self.write_array(a, Memo::I8, |x| x.to_le_bytes()),
            Value::List(items) => {
                self.buf.push(EMPTY_LIST);
                for chunk in items.chunks(BATCH) {
                    self.buf.push(MARK);
                    for item in chunk {
                        self.write(item);
                    }
                    self.buf.push(APPENDS);
                }
            }
            Value::Dict(items) => {
                self.buf.push(EMPTY_DICT);
                for chunk in items.chunks(BATCH) {
                    self.buf.push(MARK);
                    for (key, value) in chunk {
                        write_str(&mut self.buf, key);
                        self.write(value);
                    }
                    self.buf.push(SETITEMS);
                }
            }
        }
    }

    /// Pushes a memoized object: written and put in the memo the first time, fetched after.
    fn memoized(&mut self, m: Memo) {
        match self.memo[m as usize] {
            Some(i) => self.get(i),
            None => {
                m.first_write(&mut self.buf);
                self.memo[m as usize] = Some(self.put());
            }
        }
    }

    /// Puts the object on the stack in the next memo slot; returns its index.
    fn put(&mut self) -> u32 {
        let i = self.next_memo;
        match u8::try_from(i) {
            Ok(b) => self.buf.extend_from_slice(&[BINPUT, b]),
            Err(_) => {
                self.buf.push(LONG_BINPUT);
                self.buf.extend_from_slice(&i.to_le_bytes());
            }
        }
        self.next_memo += 1;
        i
    }

    /// Pushes memo slot `i`.
    fn get(&mut self, i: u32) {
        match u8::try_from(i) {
            Ok(b) => self.buf.extend_from_slice(&[BINGET, b]),
            Err(_) => {
                self.buf.push(LONG_BINGET);
                self.buf.extend_from_slice(&i.to_le_bytes());
            }
        }
    }

    /// `numpy.array(numpy.frombuffer(<bytes>, '<f8'))`, the bytes sent the first time and
    /// fetched from the memo after (see [`Value::SharedF64`]).
    fn write_shared_f64(&mut self, a: &[f64]) {
        let key = (a.as_ptr() as usize, a.len());
        let known = self.shared.get(&key).copied();
        let n_bytes = a.len() * 8;
        if known.is_none() && self.shared_bytes + n_bytes > MAX_SHARED_BYTES {
            return self.write_array(a, Memo::F8, |x| x.to_le_bytes());
        }
        self.memoized(Memo::Array);
        self.memoized(Memo::FromBuffer);
        match known {
            Some(i) => self.get(i),
            None => {
                self.buf.push(BINBYTES);
                // `check` has bounded n_bytes by u32::MAX.
                self.buf.extend_from_slice(&(n_bytes as u32).to_le_bytes());
                for x in a {
                    self.buf.extend_from_slice(&x.to_le_bytes());
                }
                let i = self.put();
                self.shared.insert(key, i);
                self.shared_bytes += n_bytes;
            }
        }
        self.memoized(Memo::F8);
        self.buf
            .extend_from_slice(&[TUPLE2, REDUCE, TUPLE1, REDUCE]);
    }

    /// `numpy.frombuffer(bytearray(<bytes>), <dtype>)`, the bytes those of `a` in
    /// little-endian order.
    fn write_array<T: Copy, const N: usize>(
        &mut self,
        a: &[T],
        dtype: Memo,
        le_bytes: impl Fn(T) -> [u8; N],
    ) {
        self.memoized(Memo::FromBuffer);
        self.memoized(Memo::ByteArray);
        let n_bytes = a.len() * N;
        self.buf.push(BINBYTES);
        // `check` has bounded n_bytes by u32::MAX.
        self.buf.extend_from_slice(&(n_bytes as u32).to_le_bytes());
        let start = self.buf.len();
        self.buf.resize(start + n_bytes, 0);
        // On little-endian targets this loop compiles to a copy.
        for (out, &x) in self.buf[start..].chunks_exact_mut(N).zip(a) {
            out.copy_from_slice(&le_bytes(x));
        }
        self.buf.extend_from_slice(&[TUPLE1, REDUCE]);
        self.memoized(dtype);
        self.buf.extend_from_slice(&[TUPLE2, REDUCE]);
    }
}

/// Pickles the list `items` in one buffer (see [`Encoder`] to stream).
pub fn to_bytes(items: &[Value]) -> Result<Vec<u8>> {
    let mut e = Encoder::new();
    for item in items {
        e.push(item)?;
    }
    Ok(e.finish())
}

/// Fails when `v` holds an array or a string of more than `max_bytes` bytes (pickle
/// protocol 3 has no `bytes` or `str` of 4 GiB or more).
fn check(v: &Value, max_bytes: u64) -> Result<()> {
    let (len, size, what) = match v {
        Value::Str(s) => (s.len(), 1, "string"),
        Value::F32(a) => (a.len(), 4, "float32 array"),
        Value::F64(a) | Value::SharedF64(a) => (a.len(), 8, "float64 array"),
        Value::U32(a) => (a.len(), 4, "uint32 array"),
        Value::I32(a) => (a.len(), 4, "int32 array"),
        Value::I64(a) => (a.len(), 8, "int64 array"),
        Value::List(items) => return items.iter().try_for_each(|v| check(v, max_bytes)),
        Value::Dict(items) => {
            return items.iter().try_for_each(|(k, v)| {
                check(&Value::Str(k), max_bytes)?;
                check(v, max_bytes)
            });
        }
        Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) => return Ok(()),
    };
    let bytes = len as u64 * size;
    if bytes > max_bytes {
        let what = if size == 1 {
            format!("string of {len} bytes")
        } else {
            format!("{what} of {len} values ({bytes} bytes)")
        };
        return Err(Error::TooLarge(format!(
            "a {what} cannot be pickled: pickle protocol 3 holds at most {max_bytes} \
             bytes in one object"
        )));
    }
    Ok(())
}

/// `BINUNICODE`: a `str` of fewer than 2^32 bytes (see [`check`]).
fn write_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(BINUNICODE);
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// `BININT` when `i` fits in 32 bits, else `LONG1` with the fewest two's-complement
/// little-endian bytes, as CPython writes them.
fn write_int(buf: &mut Vec<u8>, i: i64) {
    if let Ok(small) = i32::try_from(i) {
        buf.push(BININT);
        buf.extend_from_slice(&small.to_le_bytes());
        return;
    }
    let bytes = i.to_le_bytes();
    let mut n = bytes.len();
    // Drop a top byte that only repeats the sign of the byte below it.
    while n > 1
        && ((bytes[n - 1] == 0 && bytes[n - 2] & 0x80 == 0)
            || (bytes[n - 1] == 0xff && bytes[n - 2] & 0x80 != 0))
    {
        n -= 1;
    }
    buf.extend_from_slice(&[LONG1, n as u8]);
    buf.extend_from_slice(&bytes[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int_bytes(i: i64) -> Vec<u8> {
        let mut b = Vec::new();
        write_int(&mut b, i);
        b
    }

    #[test]
    fn ints_use_binint_within_32_bits_and_minimal_long1_beyond() {
        assert_eq!(int_bytes(0), [BININT, 0, 0, 0, 0]);
        assert_eq!(int_bytes(-1), [BININT, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(int_bytes(i32::MAX.into()), [BININT, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(int_bytes(i32::MIN.into()), [BININT, 0, 0, 0, 0x80]);
        assert_eq!(
            int_bytes(-2713437),
            [&[BININT][..], &(-2713437i32).to_le_bytes()].concat()
        );
        // 2^31 needs a fifth byte for its sign; -2^31 - 1 too.
        assert_eq!(int_bytes(1 << 31), [LONG1, 5, 0, 0, 0, 0x80, 0]);
        assert_eq!(
            int_bytes(-(1 << 31) - 1),
            [LONG1, 5, 0xff, 0xff, 0xff, 0x7f, 0xff]
        );
        assert_eq!(int_bytes(1 << 62), [LONG1, 8, 0, 0, 0, 0, 0, 0, 0, 0x40]);
        assert_eq!(int_bytes(i64::MIN), [LONG1, 8, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(
            int_bytes(i64::MAX),
            [LONG1, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]
        );
        // CPython's own bytes (`pickle.dumps(x, protocol=3)`).
        assert_eq!(
            int_bytes(39627866878511337),
            [LONG1, 8, 0xe9, 0x08, 0x80, 0xc0, 0x55, 0xc9, 0x8c, 0x00]
        );
        assert_eq!(
            int_bytes(-39627866878511337),
            [LONG1, 8, 0x17, 0xf7, 0x7f, 0x3f, 0xaa, 0x36, 0x73, 0xff]
        );
        assert_eq!(int_bytes(1 << 40), [LONG1, 6, 0, 0, 0, 0, 0, 1]);
        assert_eq!(int_bytes(-(1 << 40)), [LONG1, 6, 0, 0, 0, 0, 0, 0xff]);
    }

    #[test]
    fn scalars_strings_and_containers() {
        let bytes = to_bytes(&[
            Value::None,
            Value::Bool(true),
            Value::Bool(false),
            Value::Float(1.0),
            Value::Str("é"),
            Value::List(vec![]),
            Value::Dict(vec![("a", Value::Int(1))]),
        ])
        .unwrap();
        let expected: Vec<u8> = [
            &[PROTO, 3, EMPTY_LIST, MARK, NONE, NEWTRUE, NEWFALSE][..],
            &[BINFLOAT, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0],
            &[BINUNICODE, 2, 0, 0, 0, 0xc3, 0xa9],
            &[EMPTY_LIST],
            &[
                EMPTY_DICT, MARK, BINUNICODE, 1, 0, 0, 0, b'a', BININT, 1, 0, 0, 0, SETITEMS,
            ],
            &[APPENDS, STOP],
        ]
        .concat();
        assert_eq!(bytes, expected);
        // An empty list is PROTO, EMPTY_LIST, STOP.
        assert_eq!(to_bytes(&[]).unwrap(), [PROTO, 3, EMPTY_LIST, STOP]);
    }

    #[test]
    fn arrays_memoize_their_globals_and_dtypes() {
        let bytes = to_bytes(&[Value::F32(&[1.0]), Value::F32(&[]), Value::I64(&[-2])]).unwrap();
        let expected: Vec<u8> = [
            &[PROTO, 3, EMPTY_LIST, MARK][..],
            &[GLOBAL],
            b"numpy\nfrombuffer\n",
            &[BINPUT, 0, GLOBAL],
            b"builtins\nbytearray\n",
            &[
                BINPUT, 1, BINBYTES, 4, 0, 0, 0, 0, 0, 0x80, 0x3f, TUPLE1, REDUCE,
            ],
            &[
                BINUNICODE, 3, 0, 0, 0, b'<', b'f', b'4', BINPUT, 2, TUPLE2, REDUCE,
            ],
            // The second array fetches all three.
            &[BINGET, 0, BINGET, 1, BINBYTES, 0, 0, 0, 0, TUPLE1, REDUCE],
            &[BINGET, 2, TUPLE2, REDUCE],
            &[BINGET, 0, BINGET, 1, BINBYTES, 8, 0, 0, 0],
            &[
                0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, TUPLE1, REDUCE,
            ],
            &[
                BINUNICODE, 3, 0, 0, 0, b'<', b'i', b'8', BINPUT, 3, TUPLE2, REDUCE,
            ],
            &[APPENDS, STOP],
        ]
        .concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn batches_of_1000_and_streaming_gives_the_same_bytes() {
        let items: Vec<Value> = (0..2500).map(|i| Value::Int(i * 7)).collect();
        let whole = to_bytes(&items).unwrap();
        // 3 MARKs and 3 APPENDS: 1000, 1000, 500.
        assert_eq!(whole.len(), 3 + 2500 * 5 + 3 * 2 + 1);
        assert_eq!(whole[3], MARK);
        assert_eq!(whole[4 + 1000 * 5], APPENDS);
        assert_eq!(whole[5 + 1000 * 5], MARK);

        let mut e = Encoder::new();
        let mut streamed = Vec::new();
        for item in &items {
            e.push(item).unwrap();
            if e.buffer_len() > 777 {
                streamed.extend(e.take());
                assert_eq!(e.buffer_len(), 0);
            }
        }
        streamed.extend(e.finish());
        assert_eq!(streamed, whole);

        // Exactly 1000 items: one batch, no empty MARK/APPENDS after it.
        let thousand = to_bytes(&items[..1000]).unwrap();
        assert_eq!(&thousand[thousand.len() - 2..], &[APPENDS, STOP]);
        assert_eq!(thousand.len(), 3 + 1 + 1000 * 5 + 1 + 1);
    }

    #[test]
    fn nested_lists_batch_too() {
        let items: Vec<Value> = (0..1001).map(|_| Value::None).collect();
        let bytes = to_bytes(&[Value::List(items)]).unwrap();
        let inner = &bytes[4..bytes.len() - 2];
        assert_eq!(inner[..2], [EMPTY_LIST, MARK]);
        assert_eq!(inner[2 + 1000], APPENDS);
        assert_eq!(inner[3 + 1000..], [MARK, NONE, APPENDS]);
    }

    /// Pythons with numpy to load the pickles with: the system one and the SPARCL venv's.
    fn pythons_with_numpy() -> Vec<String> {
        let mut found = Vec::new();
        for py in ["python3", "/root/.cache/meridian/sparcl-venv/bin/python"] {
            let ok = std::process::Command::new(py)
                .args(["-c", "import numpy"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                found.push(py.to_string());
            } else {
                eprintln!("skipping {py}: not found or without numpy");
            }
        }
        found
    }

    const CHECK_PY: &str = r#"
import math, pickle, sys
import numpy as np
with open(sys.argv[1], "rb") as f:
    obj = pickle.load(f)
assert type(obj) is list, type(obj)
assert len(obj) == 3 + 2500, len(obj)
head, rec, arrays = obj[0], obj[1], obj[2]
assert head == {
    "status": {"success": True, "info": ["Successfully found 2 records"], "warnings": []},
    "UNITS": {"DESI-EDR": {"flux": "10**-17 erg cm-2 s-1 AA-1", "wavelength": "AA",
                           "dec": None}},
}, head
assert rec["_dr"] == "DESI-EDR"
for k, v in {"a": -2713437, "b": 39627866878511337, "c": 2**62, "d": -2**63, "e": 2**63 - 1,
             "f": 2**31, "g": -2**31 - 1, "h": 0}.items():
    assert type(rec[k]) is int and rec[k] == v, (k, rec[k])
assert rec["tiny"] == 1e-300 and type(rec["tiny"]) is float
assert rec["negzero"] == 0.0 and math.copysign(1.0, rec["negzero"]) == -1.0
assert math.isnan(rec["nan"]) and rec["inf"] == math.inf
assert rec["s"] == "é 日本 ok"
assert rec["t"] is True and rec["u"] is False and rec["n"] is None
assert rec["list"] == [1, "x", [2.5]]
expect = {"f4": ("<f4", [1.5, -0.0, np.inf]), "f8": ("<f8", [1e-300, 4000.25]),
          "u4": ("<u4", [0, 4294967295]), "i4": ("<i4", [-2147483648, 7]),
          "i8": ("<i8", [-2713437, 39627866878511337, 2**62]), "empty": ("<f4", [])}
for k, (dt, vals) in expect.items():
    a = arrays[k]
    assert type(a) is np.ndarray, (k, type(a))
    assert a.dtype == np.dtype(dt), (k, a.dtype)
    assert a.shape == (len(vals),), (k, a.shape)
    assert a.flags.writeable, k
    assert a.tolist() == vals, (k, a.tolist())
assert np.isnan(arrays["nan4"][0])
arrays["f4"][0] = 2.0
assert arrays["f4"][0] == 2.0
big = arrays["big"]
assert big.dtype == np.float32 and big.shape == (100000,)
assert np.array_equal(big, np.arange(100000, dtype=np.float32) * np.float32(0.5))
for i, r in enumerate(obj[3:]):
    assert r == {"_dr": "DESI-EDR", "specid": i - 1000}, r
print("ok", np.__version__)
"#;

    #[test]
    fn python_loads_the_pickle_on_every_numpy_at_hand() {
        let pythons = pythons_with_numpy();
        if pythons.is_empty() {
            eprintln!("skipped: no python3 with numpy");
            return;
        }
        let big: Vec<f32> = (0..100_000).map(|i| i as f32 * 0.5).collect();
        let head = Value::Dict(vec![
            (
                "status",
                Value::Dict(vec![
                    ("success", Value::Bool(true)),
                    (
                        "info",
                        Value::List(vec![Value::Str("Successfully found 2 records")]),
                    ),
                    ("warnings", Value::List(vec![])),
                ]),
            ),
            (
                "UNITS",
                Value::Dict(vec![(
                    "DESI-EDR",
                    Value::Dict(vec![
                        ("flux", Value::Str(crate::FLUX_UNIT)),
                        ("wavelength", Value::Str("AA")),
                        ("dec", Value::None),
                    ]),
                )]),
            ),
        ]);
        let rec = Value::Dict(vec![
            ("_dr", Value::Str("DESI-EDR")),
            ("a", Value::Int(-2713437)),
            ("b", Value::Int(39627866878511337)),
            ("c", Value::Int(1 << 62)),
            ("d", Value::Int(i64::MIN)),
            ("e", Value::Int(i64::MAX)),
            ("f", Value::Int(1 << 31)),
            ("g", Value::Int(-(1 << 31) - 1)),
            ("h", Value::Int(0)),
            ("tiny", Value::Float(1e-300)),
            ("negzero", Value::Float(-0.0)),
            ("nan", Value::Float(f64::NAN)),
            ("inf", Value::Float(f64::INFINITY)),
            ("s", Value::Str("é 日本 ok")),
            ("t", Value::Bool(true)),
            ("u", Value::Bool(false)),
            ("n", Value::None),
            (
                "list",
                Value::List(vec![
                    Value::Int(1),
                    Value::Str("x"),
                    Value::List(vec![Value::Float(2.5)]),
                ]),
            ),
        ]);
        let arrays = Value::Dict(vec![
            ("f4", Value::F32(&[1.5, -0.0, f32::INFINITY])),
            ("f8", Value::F64(&[1e-300, 4000.25])),
            ("u4", Value::U32(&[0, u32::MAX])),
            ("i4", Value::I32(&[i32::MIN, 7])),
            ("i8", Value::I64(&[-2713437, 39627866878511337, 1 << 62])),
            ("empty", Value::F32(&[])),
            ("nan4", Value::F32(&[f32::NAN])),
            ("big", Value::F32(&big)),
        ]);
        let mut e = Encoder::new();
        let mut bytes = Vec::new();
        for item in [head, rec, arrays] {
            e.push(&item).unwrap();
            bytes.extend(e.take());
        }
        for i in 0..2500 {
            e.push(&Value::Dict(vec![
                ("_dr", Value::Str("DESI-EDR")),
                ("specid", Value::Int(i - 1000)),
            ]))
            .unwrap();
        }
        bytes.extend(e.finish());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answer.pkl");
        std::fs::write(&path, &bytes).unwrap();
        for py in pythons {
            let out = std::process::Command::new(&py)
                .arg("-c")
                .arg(CHECK_PY)
                .arg(&path)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.starts_with("ok"),
                "{py}: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("{py}: {}", stdout.trim());
        }
    }

    #[test]
    fn oversized_objects_are_refused_before_anything_is_written() {
        // The real limit is 4 GiB - 1; the same code path with a small one.
        let mut e = Encoder::new();
        e.max_object_bytes = 8;
        e.push(&Value::U32(&[1, 2])).unwrap();
        let before = e.buffer_len();
        let err = e
            .push(&Value::Dict(vec![
                ("ok", Value::Int(1)),
                ("mask", Value::U32(&[1, 2, 3])),
            ]))
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
        assert!(
            err.to_string()
                .contains("uint32 array of 3 values (12 bytes)"),
            "{err}"
        );
        assert_eq!(e.buffer_len(), before);
        assert!(e.push(&Value::Str("123456789")).is_err());
        assert!(
            e.push(&Value::Dict(vec![("123456789", Value::None)]))
                .is_err()
        );
        assert!(e.push(&Value::F64(&[1.0])).is_ok());
        assert_eq!(Encoder::new().max_object_bytes, 0xffff_ffff);
    }

    const SHARED_PY: &str = r#"
import pickle, sys
import numpy as np
with open(sys.argv[1], "rb") as f:
    obj = pickle.load(f)
assert len(obj) == 600, len(obj)
for i, r in enumerate(obj):
    w = r["wavelength"]
    assert type(w) is np.ndarray and w.dtype == np.dtype("<f8") and w.flags.writeable
    k = i % 300
    assert w.tolist() == [3600.0 + k, 3601.0 + k, 3602.5 + k], (i, w.tolist())
a, b = obj[0]["wavelength"], obj[300]["wavelength"]
a[0] = -1.0
assert b[0] == 3600.0, "records must not share one array"
print("ok")
"#;

    #[test]
    fn shared_arrays_are_sent_once_and_load_as_copies() {
        let grids: Vec<Vec<f64>> = (0..300)
            .map(|k| vec![3600.0 + k as f64, 3601.0 + k as f64, 3602.5 + k as f64])
            .collect();
        let mut e = Encoder::new();
        for i in 0..600 {
            e.push(&Value::Dict(vec![(
                "wavelength",
                Value::SharedF64(&grids[i % 300]),
            )]))
            .unwrap();
        }
        let bytes = e.finish();
        // 300 grids of 24 bytes, each sent once; 300 memo slots need LONG_BINPUT.
        let plain = to_bytes(
            &(0..600)
                .map(|i| Value::Dict(vec![("wavelength", Value::F64(&grids[i % 300]))]))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(bytes.len() < plain.len());
        assert!(bytes.contains(&LONG_BINPUT) && bytes.contains(&LONG_BINGET));
        for py in pythons_with_numpy() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("shared.pkl");
            std::fs::write(&path, &bytes).unwrap();
            let out = std::process::Command::new(&py)
                .args(["-c", SHARED_PY])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{py}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
