//! Streamed transactions (pgoutput protocol v2 with `streaming 'on'`):
//! Postgres sends a transaction that outgrows its `logical_decoding_work_mem`
//! while it is still in progress, in chunks (stream start `S` .. stream stop
//! `E`); chunks of different transactions interleave with each other and
//! with whole transactions; the transaction ends with a stream commit (`c`)
//! or a stream abort (`A`) of the whole transaction or of one of its
//! subtransactions. [`StreamBuffer`] holds each open transaction's
//! messages as received, in order, in memory up to one limit over all of
//! them; at the stream commit the replicator replays them as one
//! transaction, exactly as if Postgres had sent it after its commit.
//!
//! Inside a chunk every change carries the xid of the (sub)transaction that
//! made it, so a subtransaction's abort drops exactly its changes. A
//! relation message belongs to the whole transaction (pgoutput remembers
//! per top-level transaction that it sent it, also when the subtransaction
//! whose change triggered it aborts), so it is never dropped by a
//! subtransaction abort.

use std::collections::HashMap;

use bytes::Bytes;

use crate::replicate::ReplicateError;

/// Memory counted for a buffered message beyond its bytes (its slot in the
/// list and its handle on the received bytes).
pub const MESSAGE_OVERHEAD_BYTES: usize = 48;

/// One message of a streamed transaction, as received.
#[derive(Debug, Clone)]
pub struct Buffered {
    /// The (sub)transaction whose change this is; `None` for a message of
    /// the whole transaction (a relation).
    pub subxid: Option<u32>,
    /// The pgoutput message (decode it with `in_stream = true`).
    pub bytes: Bytes,
}

/// The open streamed transactions, by top-level xid.
#[derive(Debug)]
pub struct StreamBuffer {
    open: HashMap<u32, Vec<Buffered>>,
    /// Counted bytes of every buffered message ([`MESSAGE_OVERHEAD_BYTES`]
    /// each included).
    bytes: usize,
    bytes_max: usize,
}

fn cost(message: &Buffered) -> usize {
    message.bytes.len() + MESSAGE_OVERHEAD_BYTES
}

impl StreamBuffer {
    /// An empty buffer that holds at most `bytes_max` counted bytes.
    pub fn new(bytes_max: usize) -> StreamBuffer {
        StreamBuffer {
            open: HashMap::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// Counted bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Streamed transactions neither committed nor aborted yet.
    pub fn open_transactions(&self) -> usize {
        self.open.len()
    }

    /// A chunk of `xid` starts. Its first chunk (`first_segment`) starts
    /// the transaction afresh (what an earlier first chunk left is dropped:
    /// Postgres sends a transaction again from its start); a later chunk
    /// must continue one this buffer holds.
    pub fn start(&mut self, xid: u32, first_segment: bool) -> Result<(), ReplicateError> {
        if first_segment {
            let stale = self.open.insert(xid, Vec::new());
            self.release(stale.as_deref().unwrap_or_default());
            return Ok(());
        }
        if self.open.contains_key(&xid) {
            Ok(())
        } else {
            Err(ReplicateError::Malformed(format!(
                "a stream chunk of transaction {xid} continues one whose first chunk was not received"
            )))
        }
    }

    /// Appends a message to `xid`. Past the limit nothing is appended and
    /// the answer is [`ReplicateError::StreamBufferFull`].
    pub fn push(&mut self, xid: u32, message: Buffered) -> Result<(), ReplicateError> {
        let size = cost(&message);
        let Some(messages) = self.open.get_mut(&xid) else {
            return Err(ReplicateError::Malformed(format!(
                "a streamed message of transaction {xid} arrived outside its chunks"
            )));
        };
        if self.bytes.saturating_add(size) > self.bytes_max {
            return Err(ReplicateError::StreamBufferFull {
                xid,
                bytes_max: self.bytes_max,
            });
        }
        messages.push(message);
        self.bytes += size;
        Ok(())
    }

    /// `xid` committed: its messages, in arrival order.
    pub fn commit(&mut self, xid: u32) -> Result<Vec<Buffered>, ReplicateError> {
        let messages = self.open.remove(&xid).ok_or_else(|| {
            ReplicateError::Malformed(format!(
                "a stream commit of transaction {xid}, whose chunks were not received"
            ))
        })?;
        self.release(&messages);
        Ok(messages)
    }

    /// `subxid` of `xid` aborted (`subxid == xid`: the whole transaction).
    /// An abort of a transaction this buffer does not hold drops nothing.
    pub fn abort(&mut self, xid: u32, subxid: u32) {
        let Some(messages) = self.open.get_mut(&xid) else {
            return;
        };
        if subxid == xid {
            if let Some(messages) = self.open.remove(&xid) {
                self.release(&messages);
            }
            return;
        }
        let mut dropped = 0;
        messages.retain(|message| {
            let keep = message.subxid != Some(subxid);
            if !keep {
                dropped += cost(message);
            }
            keep
        });
        self.bytes -= dropped;
    }

    fn release(&mut self, messages: &[Buffered]) {
        let size: usize = messages.iter().map(cost).sum();
        assert!(size <= self.bytes, "released more than was counted");
        self.bytes -= size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(subxid: Option<u32>, text: &'static str) -> Buffered {
        Buffered {
            subxid,
            bytes: Bytes::from_static(text.as_bytes()),
        }
    }

    fn texts(messages: &[Buffered]) -> Vec<&[u8]> {
        messages.iter().map(|m| &m.bytes[..]).collect()
    }

    #[test]
    fn interleaved_transactions_keep_their_own_messages_in_order() {
        let mut buffer = StreamBuffer::new(1 << 20);
        buffer.start(1, true).expect("start 1");
        buffer.push(1, message(Some(1), "a")).expect("push");
        buffer.start(2, true).expect("start 2");
        buffer.push(2, message(Some(2), "x")).expect("push");
        buffer.start(1, false).expect("continue 1");
        buffer.push(1, message(Some(1), "b")).expect("push");
        assert_eq!(buffer.open_transactions(), 2);
        assert_eq!(texts(&buffer.commit(1).expect("commit")), [b"a", b"b"]);
        assert_eq!(texts(&buffer.commit(2).expect("commit")), [b"x"]);
        assert_eq!(buffer.bytes(), 0);
    }

    #[test]
    fn a_subtransaction_abort_drops_only_its_changes_and_keeps_relations() {
        let mut buffer = StreamBuffer::new(1 << 20);
        buffer.start(10, true).expect("start");
        buffer.push(10, message(Some(10), "top")).expect("push");
        buffer.push(10, message(None, "relation")).expect("push");
        buffer.push(10, message(Some(11), "sub")).expect("push");
        buffer
            .push(10, message(Some(12), "other sub"))
            .expect("push");
        buffer.abort(10, 11);
        let kept = buffer.commit(10).expect("commit");
        assert_eq!(
            texts(&kept),
            [&b"top"[..], &b"relation"[..], &b"other sub"[..]]
        );
        assert_eq!(buffer.bytes(), 0);
    }

    #[test]
    fn an_abort_of_the_whole_transaction_drops_it() {
        let mut buffer = StreamBuffer::new(1 << 20);
        buffer.start(5, true).expect("start");
        buffer.push(5, message(Some(5), "gone")).expect("push");
        buffer.abort(5, 5);
        assert_eq!(buffer.open_transactions(), 0);
        assert_eq!(buffer.bytes(), 0);
        assert!(buffer.commit(5).is_err(), "nothing left to commit");
        buffer.abort(99, 99);
    }

    #[test]
    fn a_first_chunk_again_starts_the_transaction_afresh() {
        let mut buffer = StreamBuffer::new(1 << 20);
        buffer.start(3, true).expect("start");
        buffer.push(3, message(Some(3), "old")).expect("push");
        buffer.start(3, true).expect("sent again from its start");
        buffer.push(3, message(Some(3), "new")).expect("push");
        assert_eq!(texts(&buffer.commit(3).expect("commit")), [b"new"]);
        assert_eq!(buffer.bytes(), 0);
    }

    #[test]
    fn a_chunk_without_its_start_is_malformed() {
        let mut buffer = StreamBuffer::new(1 << 20);
        assert!(matches!(
            buffer.start(4, false),
            Err(ReplicateError::Malformed(_))
        ));
        assert!(matches!(
            buffer.push(4, message(Some(4), "x")),
            Err(ReplicateError::Malformed(_))
        ));
    }

    #[test]
    fn the_limit_refuses_the_message_that_would_pass_it() {
        let limit = 2 * (MESSAGE_OVERHEAD_BYTES + 1);
        let mut buffer = StreamBuffer::new(limit);
        buffer.start(1, true).expect("start");
        buffer.push(1, message(Some(1), "a")).expect("under");
        buffer.push(1, message(Some(1), "b")).expect("at the limit");
        assert!(matches!(
            buffer.push(1, message(Some(1), "c")),
            Err(ReplicateError::StreamBufferFull {
                xid: 1,
                bytes_max
            }) if bytes_max == limit
        ));
        assert_eq!(buffer.bytes(), limit);
    }
}
