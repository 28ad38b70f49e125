//! The pgoutput logical replication messages (protocol versions 1 and 2),
//! decoded from the bytes of one `XLogData` payload.
//!
//! Input is untrusted: every length and count is checked against the bytes
//! that are left before anything is sliced or allocated, and a malformed
//! message is a [`DecodeError`] naming what was wrong, never a panic.
//! [`encode`] is the inverse (used by the tests and the fuzz target, which
//! checks that whatever decodes re-encodes to the same bytes).
//!
//! Layout (all integers big-endian, strings NUL-terminated), from the
//! Postgres documentation "Logical Replication Message Formats":
//!
//! ```text
//! B  final_lsn u64, commit_time i64, xid u32
//! C  flags u8, commit_lsn u64, end_lsn u64, commit_time i64
//! O  commit_lsn u64, name str
//! R  [xid u32] oid u32, namespace str, name str, replica_identity u8,
//!    columns i16, per column: flags u8, name str, type_oid u32, type_modifier i32
//! Y  [xid u32] oid u32, namespace str, name str
//! I  [xid u32] oid u32, 'N' tuple
//! U  [xid u32] oid u32, ['K' tuple | 'O' tuple], 'N' tuple
//! D  [xid u32] oid u32, 'K' tuple | 'O' tuple
//! T  [xid u32] relations u32, options u8, oid u32 * relations
//! M  [xid u32] flags u8, lsn u64, prefix str, length u32, content
//! S  xid u32, first_segment u8          (v2: a streamed transaction's chunk)
//! E                                     (v2: end of the chunk)
//! c  xid u32, flags u8, commit_lsn u64, end_lsn u64, commit_time i64
//! A  xid u32, subtransaction_xid u32
//! tuple: columns i16, per column: 'n' | 'u' | 't' length i32 bytes | 'b' length i32 bytes
//! ```
//!
//! `[xid u32]` is present only inside a streamed chunk (between `S` and
//! `E`), which the caller tells [`decode`] with `in_stream`.

use bytes::Bytes;

/// A Postgres log sequence number.
pub type PgLsn = u64;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutput {
    Begin {
        final_lsn: PgLsn,
        commit_time_micros: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: PgLsn,
        end_lsn: PgLsn,
        commit_time_micros: i64,
    },
    Origin {
        commit_lsn: PgLsn,
        name: String,
    },
    Relation(Relation),
    Type {
        xid: Option<u32>,
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        xid: Option<u32>,
        relation: u32,
        new: Tuple,
    },
    Update {
        xid: Option<u32>,
        relation: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        xid: Option<u32>,
        relation: u32,
        old: OldTuple,
    },
    Truncate {
        xid: Option<u32>,
        options: u8,
        relations: Vec<u32>,
    },
    Message {
        xid: Option<u32>,
        flags: u8,
        lsn: PgLsn,
        prefix: String,
        content: Bytes,
    },
    StreamStart {
        xid: u32,
        first_segment: u8,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: PgLsn,
        end_lsn: PgLsn,
        commit_time_micros: i64,
    },
    StreamAbort {
        xid: u32,
        subtransaction_xid: u32,
    },
}

/// A table's shape as the stream describes it (sent before its first change
/// and again after it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub xid: Option<u32>,
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 1: part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

impl RelationColumn {
    pub fn is_key(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The old row of an update or delete: only the key (`K`) or all columns
/// (`O`, replica identity full).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    Key(Tuple),
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// One row's column values, in the relation's column order.
pub type Tuple = Vec<Datum>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value the change left as it was (not sent).
    Unchanged,
    Text(Bytes),
    Binary(Bytes),
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput message is empty")]
    Empty,
    #[error("pgoutput message of kind {kind:?} ends early: {field} needs {needed} bytes at offset {offset}, {left} left")]
    Truncated {
        kind: char,
        field: &'static str,
        offset: usize,
        needed: usize,
        left: usize,
    },
    #[error(
        "pgoutput message of kind {kind:?}: {field} is not NUL-terminated UTF-8 at offset {offset}"
    )]
    BadString {
        kind: char,
        field: &'static str,
        offset: usize,
    },
    #[error(
        "pgoutput message of kind {kind:?}: {field} has invalid value {value} at offset {offset}"
    )]
    BadValue {
        kind: char,
        field: &'static str,
        offset: usize,
        value: i64,
    },
    #[error("pgoutput message of kind {kind:?} has {extra} trailing bytes")]
    Trailing { kind: char, extra: usize },
    #[error("unknown pgoutput message kind {0:#04x}")]
    UnknownKind(u8),
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    kind: char,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, needed: usize) -> Result<&'a [u8], DecodeError> {
        let left = self.bytes.len() - self.offset;
        if needed > left {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                field,
                offset: self.offset,
                needed,
                left,
            });
        }
        let slice = &self.bytes[self.offset..self.offset + needed];
        self.offset += needed;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let slice = self.take(field, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let start = self.offset;
        let rest = &self.bytes[start..];
        let bad = DecodeError::BadString {
            kind: self.kind,
            field,
            offset: start,
        };
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(bad);
        };
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| bad)?;
        self.offset = start + end + 1;
        Ok(text.to_string())
    }

    /// A count that must be non-negative and, since each item takes at least
    /// `item_bytes_min`, fit in what is left (so it never sizes a huge
    /// allocation).
    fn count(
        &mut self,
        field: &'static str,
        value: i64,
        item_bytes_min: usize,
    ) -> Result<usize, DecodeError> {
        let left = self.bytes.len() - self.offset;
        let bad = DecodeError::BadValue {
            kind: self.kind,
            field,
            offset: self.offset,
            value,
        };
        let count = usize::try_from(value).map_err(|_| bad.clone())?;
        if count.saturating_mul(item_bytes_min) > left {
            return Err(bad);
        }
        Ok(count)
    }

    fn xid(&mut self, in_stream: bool) -> Result<Option<u32>, DecodeError> {
        if in_stream {
            self.u32("xid").map(Some)
        } else {
            Ok(None)
        }
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let columns = i64::from(self.i16("tuple column count")?);
        let columns = self.count("tuple column count", columns, 1)?;
        let mut tuple = Vec::with_capacity(columns);
        for _ in 0..columns {
            let offset = self.offset;
            let datum = match self.u8("tuple column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                kind @ (b't' | b'b') => {
                    let length = i64::from(self.i32("tuple value length")?);
                    let length = self.count("tuple value length", length, 1)?;
                    let value = Bytes::copy_from_slice(self.take("tuple value", length)?);
                    if kind == b't' {
                        Datum::Text(value)
                    } else {
                        Datum::Binary(value)
                    }
                }
                other => {
                    return Err(DecodeError::BadValue {
                        kind: self.kind,
                        field: "tuple column kind",
                        offset,
                        value: i64::from(other),
                    })
                }
            };
            tuple.push(datum);
        }
        Ok(tuple)
    }

    fn old_tuple(&mut self, marker: u8) -> Result<OldTuple, DecodeError> {
        match marker {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(DecodeError::BadValue {
                kind: self.kind,
                field: "old tuple marker",
                offset: self.offset - 1,
                value: i64::from(other),
            }),
        }
    }

    fn expect_new(&mut self, marker: u8) -> Result<Tuple, DecodeError> {
        if marker != b'N' {
            return Err(DecodeError::BadValue {
                kind: self.kind,
                field: "new tuple marker",
                offset: self.offset - 1,
                value: i64::from(marker),
            });
        }
        self.tuple()
    }
}

/// Decodes one pgoutput message. `in_stream`: the message is inside a
/// streamed transaction chunk (protocol v2), where data messages carry the
/// transaction id first.
pub fn decode(bytes: &[u8], in_stream: bool) -> Result<PgOutput, DecodeError> {
    let Some((&kind, _)) = bytes.split_first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader {
        bytes,
        offset: 1,
        kind: char::from(kind),
    };
    let message = match kind {
        b'B' => PgOutput::Begin {
            final_lsn: r.u64("final_lsn")?,
            commit_time_micros: r.i64("commit_time")?,
            xid: r.u32("xid")?,
        },
        b'C' => PgOutput::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit_lsn")?,
            end_lsn: r.u64("end_lsn")?,
            commit_time_micros: r.i64("commit_time")?,
        },
        b'O' => PgOutput::Origin {
            commit_lsn: r.u64("commit_lsn")?,
            name: r.string("origin name")?,
        },
        b'R' => PgOutput::Relation(decode_relation(&mut r, in_stream)?),
        b'Y' => PgOutput::Type {
            xid: r.xid(in_stream)?,
            oid: r.u32("type oid")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        },
        b'I' => {
            let xid = r.xid(in_stream)?;
            let relation = r.u32("relation oid")?;
            let marker = r.u8("new tuple marker")?;
            PgOutput::Insert {
                xid,
                relation,
                new: r.expect_new(marker)?,
            }
        }
        b'U' => {
            let xid = r.xid(in_stream)?;
            let relation = r.u32("relation oid")?;
            let mut marker = r.u8("tuple marker")?;
            let old = if marker == b'K' || marker == b'O' {
                let old = r.old_tuple(marker)?;
                marker = r.u8("new tuple marker")?;
                Some(old)
            } else {
                None
            };
            PgOutput::Update {
                xid,
                relation,
                old,
                new: r.expect_new(marker)?,
            }
        }
        b'D' => {
            let xid = r.xid(in_stream)?;
            let relation = r.u32("relation oid")?;
            let marker = r.u8("old tuple marker")?;
            PgOutput::Delete {
                xid,
                relation,
                old: r.old_tuple(marker)?,
            }
        }
        b'T' => {
            let xid = r.xid(in_stream)?;
            let count = i64::from(r.u32("relation count")?);
            let options = r.u8("truncate options")?;
            let count = r.count("relation count", count, 4)?;
            let mut relations = Vec::with_capacity(count);
            for _ in 0..count {
                relations.push(r.u32("relation oid")?);
            }
            PgOutput::Truncate {
                xid,
                options,
                relations,
            }
        }
        b'M' => {
            let xid = r.xid(in_stream)?;
            let flags = r.u8("flags")?;
            let lsn = r.u64("lsn")?;
            let prefix = r.string("prefix")?;
            let length = i64::from(r.u32("content length")?);
            let length = r.count("content length", length, 1)?;
            PgOutput::Message {
                xid,
                flags,
                lsn,
                prefix,
                content: Bytes::copy_from_slice(r.take("content", length)?),
            }
        }
        b'S' => PgOutput::StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.u8("first_segment")?,
        },
        b'E' => PgOutput::StreamStop,
        b'c' => PgOutput::StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit_lsn")?,
            end_lsn: r.u64("end_lsn")?,
            commit_time_micros: r.i64("commit_time")?,
        },
        b'A' => PgOutput::StreamAbort {
            xid: r.u32("xid")?,
            subtransaction_xid: r.u32("subtransaction_xid")?,
        },
        other => return Err(DecodeError::UnknownKind(other)),
    };
    let extra = bytes.len() - r.offset;
    if extra != 0 {
        return Err(DecodeError::Trailing {
            kind: r.kind,
            extra,
        });
    }
    Ok(message)
}

fn decode_relation(r: &mut Reader<'_>, in_stream: bool) -> Result<Relation, DecodeError> {
    let xid = r.xid(in_stream)?;
    let oid = r.u32("relation oid")?;
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    let count = i64::from(r.i16("column count")?);
    // A column takes at least flags, an empty name, type oid and modifier.
    let count = r.count("column count", count, 10)?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        columns.push(RelationColumn {
            flags: r.u8("column flags")?,
            name: r.string("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        xid,
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// Encodes `message` as pgoutput bytes (the inverse of [`decode`] with
/// `in_stream` = whether the message has an xid where one is optional).
pub fn encode(message: &PgOutput) -> Vec<u8> {
    let mut out = Vec::new();
    let xid = |out: &mut Vec<u8>, xid: &Option<u32>| {
        if let Some(xid) = xid {
            out.extend_from_slice(&xid.to_be_bytes());
        }
    };
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    };
    match message {
        PgOutput::Begin {
            final_lsn,
            commit_time_micros,
            xid,
        } => {
            out.push(b'B');
            out.extend_from_slice(&final_lsn.to_be_bytes());
            out.extend_from_slice(&commit_time_micros.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
        }
        PgOutput::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time_micros,
        } => {
            out.push(b'C');
            out.push(*flags);
            out.extend_from_slice(&commit_lsn.to_be_bytes());
            out.extend_from_slice(&end_lsn.to_be_bytes());
            out.extend_from_slice(&commit_time_micros.to_be_bytes());
        }
        PgOutput::Origin { commit_lsn, name } => {
            out.push(b'O');
            out.extend_from_slice(&commit_lsn.to_be_bytes());
            string(&mut out, name);
        }
        PgOutput::Relation(relation) => {
            out.push(b'R');
            xid(&mut out, &relation.xid);
            out.extend_from_slice(&relation.oid.to_be_bytes());
            string(&mut out, &relation.namespace);
            string(&mut out, &relation.name);
            out.push(relation.replica_identity);
            out.extend_from_slice(&(relation.columns.len() as i16).to_be_bytes());
            for column in &relation.columns {
                out.push(column.flags);
                string(&mut out, &column.name);
                out.extend_from_slice(&column.type_oid.to_be_bytes());
                out.extend_from_slice(&column.type_modifier.to_be_bytes());
            }
        }
        PgOutput::Type {
            xid: x,
            oid,
            namespace,
            name,
        } => {
            out.push(b'Y');
            xid(&mut out, x);
            out.extend_from_slice(&oid.to_be_bytes());
            string(&mut out, namespace);
            string(&mut out, name);
        }
        PgOutput::Insert {
            xid: x,
            relation,
            new,
        } => {
            out.push(b'I');
            xid(&mut out, x);
            out.extend_from_slice(&relation.to_be_bytes());
            out.push(b'N');
            encode_tuple(&mut out, new);
        }
        PgOutput::Update {
            xid: x,
            relation,
            old,
            new,
        } => {
            out.push(b'U');
            xid(&mut out, x);
            out.extend_from_slice(&relation.to_be_bytes());
            if let Some(old) = old {
                encode_old(&mut out, old);
            }
            out.push(b'N');
            encode_tuple(&mut out, new);
        }
        PgOutput::Delete {
            xid: x,
            relation,
            old,
        } => {
            out.push(b'D');
            xid(&mut out, x);
            out.extend_from_slice(&relation.to_be_bytes());
            encode_old(&mut out, old);
        }
        PgOutput::Truncate {
            xid: x,
            options,
            relations,
        } => {
            out.push(b'T');
            xid(&mut out, x);
            out.extend_from_slice(&(relations.len() as u32).to_be_bytes());
            out.push(*options);
            for oid in relations {
                out.extend_from_slice(&oid.to_be_bytes());
            }
        }
        PgOutput::Message {
            xid: x,
            flags,
            lsn,
            prefix,
            content,
        } => {
            out.push(b'M');
            xid(&mut out, x);
            out.push(*flags);
            out.extend_from_slice(&lsn.to_be_bytes());
            string(&mut out, prefix);
            out.extend_from_slice(&(content.len() as u32).to_be_bytes());
            out.extend_from_slice(content);
        }
        PgOutput::StreamStart { xid, first_segment } => {
            out.push(b'S');
            out.extend_from_slice(&xid.to_be_bytes());
            out.push(*first_segment);
        }
        PgOutput::StreamStop => out.push(b'E'),
        PgOutput::StreamCommit {
            xid,
            flags,
            commit_lsn,
            end_lsn,
            commit_time_micros,
        } => {
            out.push(b'c');
            out.extend_from_slice(&xid.to_be_bytes());
            out.push(*flags);
            out.extend_from_slice(&commit_lsn.to_be_bytes());
            out.extend_from_slice(&end_lsn.to_be_bytes());
            out.extend_from_slice(&commit_time_micros.to_be_bytes());
        }
        PgOutput::StreamAbort {
            xid,
            subtransaction_xid,
        } => {
            out.push(b'A');
            out.extend_from_slice(&xid.to_be_bytes());
            out.extend_from_slice(&subtransaction_xid.to_be_bytes());
        }
    }
    out
}

fn encode_old(out: &mut Vec<u8>, old: &OldTuple) {
    match old {
        OldTuple::Key(tuple) => {
            out.push(b'K');
            encode_tuple(out, tuple);
        }
        OldTuple::Full(tuple) => {
            out.push(b'O');
            encode_tuple(out, tuple);
        }
    }
}

fn encode_tuple(out: &mut Vec<u8>, tuple: &Tuple) {
    out.extend_from_slice(&(tuple.len() as i16).to_be_bytes());
    for datum in tuple {
        match datum {
            Datum::Null => out.push(b'n'),
            Datum::Unchanged => out.push(b'u'),
            Datum::Text(value) | Datum::Binary(value) => {
                out.push(if matches!(datum, Datum::Text(_)) {
                    b't'
                } else {
                    b'b'
                });
                out.extend_from_slice(&(value.len() as i32).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
    }
}

/// Whether a decoded message carries an xid (so re-encoding needs
/// `in_stream = true` to decode it again).
pub fn has_stream_xid(message: &PgOutput) -> bool {
    match message {
        PgOutput::Relation(r) => r.xid.is_some(),
        PgOutput::Type { xid, .. }
        | PgOutput::Insert { xid, .. }
        | PgOutput::Update { xid, .. }
        | PgOutput::Delete { xid, .. }
        | PgOutput::Truncate { xid, .. }
        | PgOutput::Message { xid, .. } => xid.is_some(),
        _ => false,
    }
}

/// The fuzz property (`fuzz/fuzz_targets/pgoutput_decode.rs` and the
/// proptest below): decoding never panics, in and out of a streamed chunk,
/// and whatever decodes re-encodes to exactly the same bytes.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    for in_stream in [false, true] {
        if let Ok(message) = decode(data, in_stream) {
            assert_eq!(encode(&message), data, "{message:?} re-encodes differently");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_fuzz_seeds_decode() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/pgoutput_decode");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("the seed corpus") {
            let path = entry.expect("a seed").path();
            let bytes = std::fs::read(&path).expect("read a seed");
            let in_stream = path.ends_with("stream_insert");
            assert!(decode(&bytes, in_stream).is_ok(), "{}", path.display());
            fuzz_check(&bytes);
            seeds += 1;
        }
        assert!(seeds >= 9);
    }

    proptest! {
        // FLIGHTLOG_FUZZ_CASES raises the case count, as for the WAL targets.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("FLIGHTLOG_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4_000)
        ))]
        #[test]
        fn decoding_random_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            fuzz_check(&data);
        }

        #[test]
        fn decoding_mutated_messages_never_panics(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
        ) {
            let mut bytes = encode(&PgOutput::Update {
                xid: None,
                relation: 9,
                old: Some(OldTuple::Key(vec![text("k"), Datum::Null])),
                new: vec![text("value"), Datum::Unchanged],
            });
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(1 + cut % bytes.len());
            fuzz_check(&bytes);
        }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn messages_round_trip() {
        let messages = [
            PgOutput::Begin {
                final_lsn: 0x16B_6C50,
                commit_time_micros: -5,
                xid: 7,
            },
            PgOutput::Relation(Relation {
                xid: None,
                oid: 16384,
                namespace: "public".into(),
                name: "items".into(),
                replica_identity: b'd',
                columns: vec![RelationColumn {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                }],
            }),
            PgOutput::Update {
                xid: None,
                relation: 16384,
                old: Some(OldTuple::Key(vec![text("1"), Datum::Null])),
                new: vec![text("2"), Datum::Unchanged],
            },
            PgOutput::Delete {
                xid: None,
                relation: 1,
                old: OldTuple::Key(vec![text("2")]),
            },
            PgOutput::Truncate {
                xid: None,
                options: 1,
                relations: vec![1, 2],
            },
        ];
        for message in messages {
            let bytes = encode(&message);
            assert_eq!(decode(&bytes, false), Ok(message));
        }
    }

    #[test]
    fn lengths_past_the_end_are_errors_not_allocations() {
        // An insert whose tuple claims 32767 columns in 3 bytes.
        let mut bytes = vec![b'I', 0, 0, 0, 1, b'N'];
        bytes.extend_from_slice(&i16::MAX.to_be_bytes());
        bytes.push(b'n');
        assert!(matches!(
            decode(&bytes, false),
            Err(DecodeError::BadValue { .. })
        ));
        // A text value claiming 2 GiB.
        let mut bytes = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
        bytes.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode(&bytes, false).is_err());
        let mut bytes = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
        bytes.extend_from_slice(&(-1i32).to_be_bytes());
        assert!(decode(&bytes, false).is_err());
    }

    #[test]
    fn every_prefix_of_a_valid_message_is_an_error() {
        let bytes = encode(&PgOutput::Update {
            xid: None,
            relation: 3,
            old: Some(OldTuple::Key(vec![text("k")])),
            new: vec![text("k2"), Datum::Null],
        });
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end], false).is_err(), "prefix {end}");
        }
    }
}
