//! Golden WAL files: `tests/data/wal-v1/` is a WAL directory written by the
//! format-version-1 code (two segments: data frames built with
//! `record::encode_record`, one checkpoint, one abort). The test opens a copy
//! and checks every frame exactly, so a change that makes this build unable to
//! read what an earlier build wrote fails here, not in production.
//!
//! Regenerate (only when introducing a new format version, into a new
//! directory): `FLIGHTLOG_WRITE_GOLDEN=1 cargo test --test golden -- --ignored`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use prost::Message;

use flightlog::proto::sync::{ColumnDescriptor, ColumnRole, DataSyncCommand};
use flightlog::proto::wal::{Abort, Checkpoint, OriginState, TableState};
use flightlog::record::{decode_record, encode_record};
use flightlog::wal::format::{frame_len, FrameKind, SEGMENT_HEADER_LEN};
use flightlog::wal::segment::SegmentInit;
use flightlog::wal::{Lsn, SegmentId, Wal, WalConfig, WalId, WalPointer};

/// The WAL identity drawn when the golden directory was generated.
const GOLDEN_WAL_ID: u128 = 0xf60f_7b35_921c_70b2_9913_808e_4938_6b93;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wal-v1")
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]))
}

fn batch(ids: &[i64], names: &[Option<&str>]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(names.to_vec())),
        ],
    )
    .expect("golden batch")
}

fn command(path: &str, origin: &str, sequence_number: Option<u64>) -> DataSyncCommand {
    DataSyncCommand {
        path: path.to_string(),
        origin: origin.to_string(),
        sequence_number,
        column_descriptors: vec![
            ColumnDescriptor {
                role: ColumnRole::NewPk as i32,
                name: "id".to_string(),
            },
            ColumnDescriptor {
                role: ColumnRole::Value as i32,
                name: "name".to_string(),
            },
        ],
        ..Default::default()
    }
}

/// What a golden frame holds, decoded.
#[derive(Debug, Clone, PartialEq)]
enum Content {
    Data {
        command: DataSyncCommand,
        batches: Vec<RecordBatch>,
    },
    Checkpoint(Checkpoint),
    Abort(Abort),
}

impl Content {
    fn kind(&self) -> FrameKind {
        match self {
            Content::Data { .. } => FrameKind::Data,
            Content::Checkpoint(_) => FrameKind::Checkpoint,
            Content::Abort(_) => FrameKind::Abort,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Content::Data { command, batches } => {
                encode_record(command, &schema(), batches).expect("encode golden record")
            }
            Content::Checkpoint(checkpoint) => checkpoint.encode_to_vec(),
            Content::Abort(abort) => abort.encode_to_vec(),
        }
    }

    fn decode(kind: FrameKind, payload: &[u8]) -> Content {
        match kind {
            FrameKind::Data => {
                let record = decode_record(payload).expect("golden data frame decodes");
                assert_eq!(record.schema, schema());
                Content::Data {
                    command: record.command,
                    batches: record.batches,
                }
            }
            FrameKind::Checkpoint => {
                Content::Checkpoint(Checkpoint::decode(payload).expect("golden checkpoint"))
            }
            FrameKind::Abort => Content::Abort(Abort::decode(payload).expect("golden abort")),
        }
    }
}

/// The frames of the golden WAL, in Lsn order (Lsn 1 first).
fn golden_frames() -> Vec<Content> {
    vec![
        Content::Data {
            command: command("t1", "o1", None),
            batches: vec![batch(&[1, 2], &[Some("a"), None])],
        },
        Content::Data {
            command: command("t1", "o1", Some(1)),
            batches: vec![
                batch(&[3], &[Some("c")]),
                batch(&[4, 5], &[Some("d"), Some("e")]),
            ],
        },
        Content::Checkpoint(Checkpoint {
            origins: vec![OriginState {
                origin: "o1".to_string(),
                memory_sequence_number: Some(1),
                durable_sequence_number: None,
            }],
            tables: vec![TableState {
                table: "file:///lake/t1".to_string(),
                applied_lsn: 0,
            }],
        }),
        // Segment 2 starts here.
        Content::Data {
            command: command("t2", "o2", None),
            batches: vec![batch(&[10], &[Some("x")])],
        },
        Content::Abort(Abort {
            origin: "o2".to_string(),
            first_lsn: 4,
            last_lsn: 4,
        }),
        Content::Data {
            command: command("t1", "o1", Some(2)),
            batches: vec![batch(&[6], &[None])],
        },
    ]
}

/// Frames 1..=3 fill segment 1 exactly; frame 4 does not fit and rolls.
fn golden_config() -> WalConfig {
    let first_segment: usize = golden_frames()[..3]
        .iter()
        .map(|c| frame_len(c.encode().len()))
        .sum();
    WalConfig {
        segment_bytes_target: (SEGMENT_HEADER_LEN + first_segment) as u64,
        frame_bytes_max: 1 << 20,
        segment_init: SegmentInit::Grow,
        recycle_pool_max: 0,
        prepare_spare: true,
        queue_depth: 16,
        batch_bytes_max: 1 << 20,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read golden dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy golden file");
    }
}

#[test]
fn golden_v1_wal_is_read_frame_for_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&golden_dir(), dir.path());
    let (wal, recovery) = Wal::open_dir(dir.path(), golden_config()).expect("open golden WAL");
    assert!(!recovery.created);
    assert_eq!(recovery.wal_id, WalId(GOLDEN_WAL_ID));
    assert!(recovery.torn_tail.is_none(), "the golden files are clean");
    assert_eq!(recovery.next_lsn, Lsn(7));
    let segments: Vec<(SegmentId, Lsn, Option<Lsn>)> = recovery
        .segments
        .iter()
        .map(|s| (s.id, s.first_lsn, s.last_lsn))
        .collect();
    assert_eq!(
        segments,
        vec![
            (SegmentId(1), Lsn(1), Some(Lsn(3))),
            (SegmentId(2), Lsn(4), Some(Lsn(6))),
        ]
    );

    let expected = golden_frames();
    assert_eq!(recovery.frames.len(), expected.len());
    let mut offset = SEGMENT_HEADER_LEN as u64;
    for (index, (frame, content)) in recovery.frames.iter().zip(&expected).enumerate() {
        let lsn = index as u64 + 1;
        let segment = if lsn <= 3 { 1 } else { 2 };
        if lsn == 4 {
            offset = SEGMENT_HEADER_LEN as u64;
        }
        let len = frame_len(content.encode().len()) as u32;
        assert_eq!(frame.header.lsn, Lsn(lsn));
        assert_eq!(frame.header.kind, content.kind(), "lsn {lsn}");
        // Appended one at a time: each frame saw the previous one fsynced.
        assert_eq!(frame.header.durable_lsn, Lsn(lsn - 1), "lsn {lsn}");
        assert_eq!(
            frame.pointer,
            WalPointer {
                segment: SegmentId(segment),
                offset,
                len
            },
            "lsn {lsn}"
        );
        offset += u64::from(len);
        let view = wal.read(frame.pointer).expect("read golden frame");
        assert_eq!(view.header, frame.header);
        assert_eq!(
            &Content::decode(view.header.kind, view.payload()),
            content,
            "lsn {lsn}"
        );
        // The encoder of this build still produces the same bytes.
        assert_eq!(view.payload(), &content.encode()[..], "lsn {lsn}");
    }
    wal.close();
}

#[test]
fn golden_v1_files_are_exactly_the_two_segments() {
    let mut names: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("read golden dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["00000000000000000001.wal", "00000000000000000002.wal"]
    );
}

/// Writes `tests/data/wal-v1/` from the current code. Run only on purpose.
#[test]
#[ignore = "generator: FLIGHTLOG_WRITE_GOLDEN=1 cargo test --test golden -- --ignored"]
fn write_golden_v1_wal() {
    if std::env::var("FLIGHTLOG_WRITE_GOLDEN").as_deref() != Ok("1") {
        eprintln!("FLIGHTLOG_WRITE_GOLDEN is not 1: nothing written");
        return;
    }
    let target = golden_dir();
    assert!(
        !target.exists(),
        "{} exists: a released format's golden files are never rewritten",
        target.display()
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open_dir(scratch.path(), golden_config()).expect("open");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for content in golden_frames() {
        runtime
            .block_on(wal.append(content.kind(), content.encode()))
            .expect("append golden frame");
    }
    eprintln!("golden WAL id: {:#034x}", wal.id().0);
    wal.close();
    drop(wal);
    std::fs::create_dir_all(&target).expect("create golden dir");
    for entry in std::fs::read_dir(scratch.path()).expect("read scratch") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".wal") {
            std::fs::copy(entry.path(), target.join(&name)).expect("copy");
        }
    }
}

/// The worked example of `wal-format.md`: frame Lsn 5 of the golden WAL, an
/// abort in segment 2, byte for byte, and segment 2's header.
#[test]
fn the_worked_example_in_wal_format_md_matches_the_encoder() {
    use flightlog::wal::format::{encode_frame, encode_segment_header, FrameHeader, SegmentHeader};
    let abort = Abort {
        origin: "o2".to_string(),
        first_lsn: 4,
        last_lsn: 4,
    };
    let header = FrameHeader {
        kind: FrameKind::Abort,
        lsn: Lsn(5),
        durable_lsn: Lsn(4),
    };
    let frame = encode_frame(SegmentId(2), &header, &abort.encode_to_vec());
    assert_eq!(
        hex(&frame),
        "1c000000ed55905303000000050000000000000004000000000000000a026f3210041804"
    );
    let segment = encode_segment_header(&SegmentHeader {
        wal_id: WalId(GOLDEN_WAL_ID),
        segment_id: SegmentId(2),
        first_lsn: Lsn(4),
    });
    assert_eq!(
        hex(&segment),
        "464c544c4757414c0100000040000000936b38498e801399b2701c92357b0ff6\
         0200000000000000\
         0400000000000000\
         000000000000000000000000\
         4943b93e"
    );
    let file = std::fs::read(golden_dir().join("00000000000000000002.wal")).expect("segment 2");
    assert_eq!(&file[..64], &segment[..]);
    assert_eq!(&file[778..778 + frame.len()], &frame[..]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
