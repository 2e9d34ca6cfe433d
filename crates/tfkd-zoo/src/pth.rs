//! A reader for PyTorch `torch.save` files: the zip format (PyTorch ≥ 1.6) and
//! the legacy format (PyTorch ≤ 1.5, e.g. the official Tf-KD teachers, saved by
//! PyTorch 1.2).
//!
//! candle's `candle_core::pickle::read_all_with_key` only reads the zip format,
//! and with the `zip` crate version this workspace resolves (9.8.2) it rejects
//! the archives PyTorch 2.x writes ("Invalid Central Directory header": PyTorch
//! adds a zip64 end record that the crate's prefix-offset detection
//! misreads). This module therefore parses the (always uncompressed) archive
//! itself and uses candle's unpickler ([`candle_core::pickle::Stack`]) only for
//! the pickle streams.

use std::collections::HashMap;
use std::io::Cursor;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use crate::error::{Result, ZooError};

/// The reader's error.
fn bad(msg: impl Into<String>) -> ZooError {
    ZooError::InvalidPth { reason: msg.into() }
}

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(bad(msg))
}

fn u16_at(b: &[u8], o: usize) -> Result<usize> {
    match b.get(o..o + 2) {
        Some(s) => Ok(u16::from_le_bytes([s[0], s[1]]) as usize),
        None => err("truncated zip archive"),
    }
}

fn u32_at(b: &[u8], o: usize) -> Result<usize> {
    match b.get(o..o + 4) {
        Some(s) => Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize),
        None => err("truncated zip archive"),
    }
}

fn u64_at(b: &[u8], o: usize) -> Result<usize> {
    match b.get(o..o + 8) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(u64::from_le_bytes(a) as usize)
        }
        None => err("truncated zip archive"),
    }
}

const MAX32: usize = 0xFFFF_FFFF;

/// Name → byte range of every stored entry of a zip archive.
fn zip_entries(b: &[u8]) -> Result<HashMap<String, (usize, usize)>> {
    let lo = b.len().saturating_sub(22 + 65_535);
    let eocd = (lo..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| bad("no zip end-of-central-directory record"))?;
    let mut n = u16_at(b, eocd + 10)?;
    let mut cd = u32_at(b, eocd + 16)?;
    if (n == 0xFFFF || cd == MAX32)
        && eocd >= 20
        && b[eocd - 20..eocd - 16] == [0x50, 0x4b, 0x06, 0x07]
    {
        let z = u64_at(b, eocd - 12)?;
        if z > b.len() {
            return err("bad zip64 end record offset");
        }
        n = u64_at(b, z + 32)?;
        cd = u64_at(b, z + 48)?;
    }
    if cd > b.len() {
        return err("bad zip central directory offset");
    }
    let mut out = HashMap::new();
    let mut p = cd;
    for _ in 0..n {
        if b.get(p..p + 4) != Some(&[0x50, 0x4b, 0x01, 0x02]) {
            return err(format!("bad zip central directory entry at byte {p}"));
        }
        let method = u16_at(b, p + 10)?;
        let mut csize = u32_at(b, p + 20)?;
        let mut usize_ = u32_at(b, p + 24)?;
        let (nl, el, cl) = (u16_at(b, p + 28)?, u16_at(b, p + 30)?, u16_at(b, p + 32)?);
        let mut off = u32_at(b, p + 42)?;
        let name =
            String::from_utf8_lossy(b.get(p + 46..p + 46 + nl).unwrap_or_default()).into_owned();
        // zip64 extended information: the 0xFFFFFFFF fields, in order.
        let mut e = p + 46 + nl;
        let end = e + el;
        while e + 4 <= end {
            let (id, len) = (u16_at(b, e)?, u16_at(b, e + 2)?);
            if id == 1 {
                let mut q = e + 4;
                for field in [&mut usize_, &mut csize, &mut off] {
                    if *field == MAX32 {
                        *field = u64_at(b, q)?;
                        q += 8;
                    }
                }
            }
            e += 4 + len;
        }
        if method != 0 || csize != usize_ {
            return err(format!(
                "zip entry {name} is compressed (method {method}), torch.save never compresses"
            ));
        }
        if off.checked_add(4).and_then(|e| b.get(off..e)) != Some(&[0x50, 0x4b, 0x03, 0x04]) {
            return err(format!("bad zip local header for {name}"));
        }
        if off > b.len() {
            return err(format!("bad zip local header offset for {name}"));
        }
        let data = off + 30 + u16_at(b, off + 26)? + u16_at(b, off + 28)?;
        if data.checked_add(csize).map_or(true, |e| e > b.len()) {
            return err(format!("zip entry {name} runs past the end of the file"));
        }
        out.insert(name, (data, csize));
        p += 46 + nl + el + cl;
    }
    Ok(out)
}

/// Walks the pickle opcodes from `at` to STOP and rejects the arguments
/// candle's unpickler does not guard: a LONG1 wider than 8 bytes (it shifts
/// past 64 bits) and a BINUNICODE or GLOBAL running past the end of the
/// bytes (it would allocate the claimed length first). An opcode it does
/// not know ends the walk: candle reports it.
fn check_pickle(b: &[u8], at: usize) -> Result<()> {
    let mut p = at;
    let need = |p: usize, n: usize, what: &str| -> Result<usize> {
        match p.checked_add(n) {
            Some(end) if end <= b.len() => Ok(end),
            _ => err(format!("pickle stream: {what} at byte {p} runs past the end")),
        }
    };
    while let Some(&op) = b.get(p) {
        p += 1;
        p = match op {
            b'.' => return Ok(()),
            // PROTO, BINPUT, BININT1, BINGET: one byte.
            0x80 | b'q' | b'K' | b'h' => need(p, 1, "an argument")?,
            b'M' => need(p, 2, "BININT2")?,
            b'r' | b'J' | b'j' => need(p, 4, "an argument")?,
            b'G' => need(p, 8, "BINFLOAT")?,
            b'X' => {
                let len = u32_at(b, p)?;
                need(p + 4, len, "BINUNICODE")?
            }
            0x8a => {
                let n = usize::from(*b.get(p).unwrap_or(&0));
                if n > 8 {
                    return err(format!("pickle stream: LONG1 of {n} bytes at byte {p} (at most 8 supported)"));
                }
                need(p + 1, n, "LONG1")?
            }
            b'c' => {
                // GLOBAL: module and class names, each ended by a newline.
                let mut q = p;
                for _ in 0..2 {
                    let nl = b[q.min(b.len())..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .ok_or_else(|| bad(format!("pickle stream: GLOBAL at byte {p} has no newline")))?;
                    q += nl + 1;
                }
                q
            }
            b')' | b'R' | b'(' | b't' | b'Q' | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 | b'N' | b's' | b'u' | b'}'
            | b'd' | b'b' | 0x81 | b']' | b'a' | b'e' => p,
            _ => return Ok(()),
        };
    }
    err("pickle stream: no STOP opcode before the end")
}

/// What in `value`, a state-dict entry, candle's
/// `Object::into_tensor_info` would index past the end of (it takes tuple
/// elements by position without checking, and panics on a short tuple), or
/// `None` when it is safe to hand over. Mirrors its walk: an optional
/// `_rebuild_from_type_v2` (callable at 0, arguments at 2) or
/// `_rebuild_parameter` (a reduce at 0) wrapper, then `_rebuild_tensor_v2`'s
/// four arguments, the first a persistent load of a five-element tuple.
fn malformed_rebuild(value: &Object) -> Option<&'static str> {
    let class = |o: &Object| match o {
        Object::Class { module_name, class_name } => Some((module_name.clone(), class_name.clone())),
        _ => None,
    };
    let is = |o: &Object, module: &str, name: &str| class(o).is_some_and(|(m, c)| m == module && c == name);
    let Object::Reduce { callable, args } = value else { return None };
    let (callable, args): (&Object, &Object) = if is(callable, "torch._tensor", "_rebuild_from_type_v2") {
        match args.as_ref() {
            Object::Tuple(t) if t.len() < 3 => return Some("_rebuild_from_type_v2 with fewer than 3 arguments"),
            Object::Tuple(t) => (&t[0], &t[2]),
            _ => return None,
        }
    } else if is(callable, "torch._utils", "_rebuild_parameter") {
        match args.as_ref() {
            Object::Tuple(t) if t.is_empty() => return Some("_rebuild_parameter without arguments"),
            Object::Tuple(t) => match &t[0] {
                Object::Reduce { callable, args } => (callable.as_ref(), args.as_ref()),
                _ => return None,
            },
            _ => return None,
        }
    } else {
        (callable.as_ref(), args.as_ref())
    };
    if !is(callable, "torch._utils", "_rebuild_tensor_v2") {
        return None;
    }
    match args {
        Object::Tuple(t) if t.len() < 4 => Some("_rebuild_tensor_v2 with fewer than 4 arguments"),
        Object::Tuple(t) => match &t[0] {
            Object::PersistentLoad(storage) => match storage.as_ref() {
                Object::Tuple(s) if s.len() < 5 => Some("a tensor storage record with fewer than 5 fields"),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn unpickle(r: &mut Cursor<&[u8]>) -> Result<Object> {
    let at = r.position();
    check_pickle(r.get_ref(), usize::try_from(at).unwrap_or(usize::MAX))?;
    let mut stack = Stack::empty();
    stack
        .read_loop(r)
        .and_then(|()| stack.finalize())
        .map_err(|e| bad(format!("pickle stream at byte {at}: {e}")))
}

fn kind(o: &Object) -> &'static str {
    match o {
        Object::List(_) => "a list",
        Object::Int(_) | Object::Long(_) => "an integer",
        Object::Dict(_) => "a dict",
        Object::Tuple(_) => "a tuple",
        _ => "not a list",
    }
}

fn storage_dtype(class_name: &str) -> Option<(DType, usize)> {
    Some(match class_name {
        "FloatStorage" => (DType::F32, 4),
        "DoubleStorage" => (DType::F64, 8),
        "HalfStorage" => (DType::F16, 2),
        "BFloat16Storage" => (DType::BF16, 2),
        "ByteStorage" => (DType::U8, 1),
        "LongStorage" => (DType::I64, 8),
        "IntStorage" => (DType::U32, 4),
        "CharStorage" | "BoolStorage" => (DType::U8, 1),
        "ShortStorage" => (DType::U8, 2),
        _ => return None,
    })
}

/// Storage key → element size, for every persistent storage reference in `o`.
fn collect_storages(o: &Object, out: &mut HashMap<String, usize>) {
    match o {
        Object::PersistentLoad(inner) => {
            if let Object::Tuple(t) = inner.as_ref() {
                if let (Some(Object::Class { class_name, .. }), Some(Object::Unicode(key))) =
                    (t.get(1), t.get(2))
                {
                    // A legacy storage view `(view_key, offset, size)` in the sixth
                    // slot: marked with usize::MAX and refused rather than read at
                    // a wrong offset.
                    let is_view = matches!(t.get(5), Some(v) if *v != Object::None);
                    let size = storage_dtype(class_name).map(|d| d.1).unwrap_or(4);
                    let e = out.entry(key.clone()).or_insert(size);
                    if is_view {
                        *e = usize::MAX;
                    }
                }
            }
        }
        Object::Tuple(v) | Object::List(v) => v.iter().for_each(|x| collect_storages(x, out)),
        Object::Dict(kv) => kv.iter().for_each(|(k, v)| {
            collect_storages(k, out);
            collect_storages(v, out)
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            collect_storages(callable, out);
            collect_storages(args, out)
        }
        _ => {}
    }
}

/// Selects the state dict: the value of `state_dict` if the top level is a dict
/// holding that key, else the top level itself.
fn select_state_dict(obj: Object) -> Object {
    if let Object::Dict(kv) = &obj {
        if let Some((_, v)) = kv
            .iter()
            .find(|(k, _)| *k == Object::Unicode("state_dict".into()))
        {
            return v.clone();
        }
    }
    obj
}

fn tensor_from(info: &candle_core::pickle::TensorInfo, data: &[u8]) -> Result<Tensor> {
    let es = info.dtype.size_in_bytes();
    let start = info.layout.start_offset();
    let dims = info.layout.dims().to_vec();
    let end = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|numel| numel.checked_mul(es))
        .and_then(|n| n.checked_add(start))
        .unwrap_or(usize::MAX);
    let bytes = data.get(start..end).ok_or_else(|| {
        bad(format!("tensor {} runs past its storage", info.name))
    })?;
    if info.layout.is_contiguous() {
        Ok(Tensor::from_raw_buffer(bytes, info.dtype, &dims, &Device::Cpu)?)
    } else if info.layout.is_fortran_contiguous() {
        let rev: Vec<usize> = dims.iter().rev().copied().collect();
        let perm: Vec<usize> = (0..dims.len()).rev().collect();
        Ok(Tensor::from_raw_buffer(bytes, info.dtype, &rev, &Device::Cpu)?
            .permute(perm)?
            .contiguous()?)
    } else {
        err(format!(
            "tensor {} is not contiguous in its storage",
            info.name
        ))
    }
}

/// Reads the tensors of a `torch.save` file held in `bytes`: the `state_dict`
/// entry when the top level is a dict that has one, else the top-level dict.
/// Entries that are not tensors of a supported dtype are skipped.
///
/// # Errors
/// [`ZooError::InvalidPth`], naming what is wrong, for any bytes that are not
/// such a file (random, truncated or corrupted input is an error, never a
/// panic; `tests/pth_fuzz.rs` checks it).
pub fn read_pth_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    read(bytes).map_err(|e| match e {
        e @ ZooError::InvalidPth { .. } => e,
        other => bad(other.to_string()),
    })
}

fn read(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    // Storage key → bytes, and the state-dict object.
    let (obj, storages): (Object, HashMap<String, &[u8]>) = if bytes
        .starts_with(&[0x50, 0x4b, 0x03, 0x04])
    {
        let entries = zip_entries(bytes)?;
        let (pkl, &(s, n)) = entries
            .iter()
            .find(|(k, _)| k.ends_with("data.pkl"))
            .ok_or_else(|| bad("no data.pkl in the archive"))?;
        let dir = pkl.trim_end_matches("data.pkl").to_string();
        let obj = unpickle(&mut Cursor::new(&bytes[s..s + n]))?;
        let storages = entries
            .iter()
            .filter_map(|(k, &(s, n))| {
                k.strip_prefix(&format!("{dir}data/"))
                    .map(|key| (key.to_string(), &bytes[s..s + n]))
            })
            .collect();
        (obj, storages)
    } else {
        // Legacy: magic, protocol, sys info, object, storage keys, storages.
        // The magic number 0x1950a86a20f9469cfc6c is a 10-byte LONG1, which
        // candle's unpickler cannot hold (it overflows an i64): match its bytes.
        const MAGIC: [u8; 15] = [
            0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
            0x2e,
        ];
        if !bytes.starts_with(&MAGIC) {
            return err(
                "not a PyTorch checkpoint (neither a zip archive nor the legacy magic number)",
            );
        }
        let mut r = Cursor::new(bytes);
        r.set_position(MAGIC.len() as u64);
        unpickle(&mut r)?; // protocol version
        unpickle(&mut r)?; // system information
        let obj = unpickle(&mut r)?;
        let keys: Vec<String> = match unpickle(&mut r)? {
            Object::List(v) | Object::Tuple(v) => v
                .into_iter()
                .map(|k| {
                    k.unicode().map_err(|o| {
                        bad(format!(
                            "legacy checkpoint: storage key is {}",
                            kind(&o)
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            o => {
                return err(format!(
                    "legacy checkpoint: storage key list is {}",
                    kind(&o)
                ))
            }
        };
        let mut sizes = HashMap::new();
        collect_storages(&obj, &mut sizes);
        if let Some((key, _)) = sizes.iter().find(|(_, &v)| v == usize::MAX) {
            return err(format!(
                    "legacy checkpoint: storage {key} is used through a storage view, which is not supported"
                ));
        }
        let mut pos = r.position() as usize;
        let mut storages = HashMap::new();
        for key in keys {
            let numel = u64_at(bytes, pos)?;
            let es = sizes.get(&key).copied().unwrap_or(4);
            let end = numel
                .checked_mul(es)
                .and_then(|n| n.checked_add(pos + 8))
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| {
                    bad(format!("legacy checkpoint: storage {key} truncated"))
                })?;
            storages.insert(key, &bytes[pos + 8..end]);
            pos = end;
        }
        (obj, storages)
    };
    let mut out = Vec::new();
    if let Object::Dict(kv) = select_state_dict(obj) {
        for (name, value) in kv {
            if let Some(what) = malformed_rebuild(&value) {
                return Err(bad(format!("entry {name:?}: {what}")));
            }
            let info = match value.into_tensor_info(name, std::path::Path::new("")) {
                Ok(Some(info)) => info,
                _ => continue,
            };
            let key = info.path.trim_start_matches('/');
            let data = storages.get(key).ok_or_else(|| {
                bad(format!("storage {key} of tensor {} not found", info.name))
            })?;
            out.push((info.name.clone(), tensor_from(&info, data)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(module: &str, name: &str) -> Object {
        Object::Class { module_name: module.into(), class_name: name.into() }
    }

    fn rebuild(args: Vec<Object>) -> Object {
        Object::Reduce { callable: Box::new(class("torch._utils", "_rebuild_tensor_v2")), args: Box::new(Object::Tuple(args)) }
    }

    fn storage(fields: usize) -> Object {
        let all = [class("torch", "FloatStorage"), Object::Unicode("0".into()), Object::Unicode("cpu".into()), Object::Int(4)];
        let mut t = vec![Object::Unicode("storage".into())];
        t.extend(all.into_iter().take(fields.saturating_sub(1)));
        Object::PersistentLoad(Box::new(Object::Tuple(t)))
    }

    /// Each short tuple that makes candle's `into_tensor_info` panic is
    /// caught first; a well-formed entry passes.
    #[test]
    fn short_rebuild_tuples_are_caught_before_candle_indexes_them() {
        let well_formed = rebuild(vec![storage(5), Object::Int(0), Object::Tuple(vec![Object::Int(1)]), Object::Tuple(vec![Object::Int(1)])]);
        assert_eq!(malformed_rebuild(&well_formed), None);
        let cases = [
            rebuild(vec![storage(5), Object::Int(0)]),
            rebuild(vec![storage(3), Object::Int(0), Object::Tuple(vec![]), Object::Tuple(vec![])]),
            Object::Reduce {
                callable: Box::new(class("torch._tensor", "_rebuild_from_type_v2")),
                args: Box::new(Object::Tuple(vec![class("torch._utils", "_rebuild_tensor_v2")])),
            },
            Object::Reduce { callable: Box::new(class("torch._utils", "_rebuild_parameter")), args: Box::new(Object::Tuple(vec![])) },
        ];
        for case in cases {
            assert!(malformed_rebuild(&case).is_some(), "{case:?}");
            let candle = std::panic::catch_unwind(|| case.clone().into_tensor_info(Object::Unicode("w".into()), std::path::Path::new("")));
            assert!(candle.is_err(), "candle no longer panics on {case:?}: the guard may be dropped");
        }
    }
}
