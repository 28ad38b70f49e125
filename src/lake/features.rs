//! Which existing tables this writer can keep correct, and whether a store
//! answers at all: checked at admission (before a put is acknowledged) and
//! again before each flush.
//!
//! The writer rewrites whole Parquet files by key and writes plain `add` /
//! `remove` actions, so it refuses tables whose meaning lives elsewhere:
//! partition values, column mapping, deletion vectors, change data files,
//! append-only tables, invariants, check constraints, generated or identity
//! columns, and table features it does not know.

use std::collections::HashMap;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::location::log_store;
use super::table::TableState;
use super::LakeError;
use crate::identity::TableId;

/// Writer features (protocol 7) a flush preserves.
const KNOWN_WRITER_FEATURES: [&str; 3] = ["timestampNtz", "appendOnly", "invariants"];

/// Errs when a flush could not keep `state`'s table correct.
pub fn check_writable(state: &TableState) -> Result<(), LakeError> {
    let refuse = |reason: String| LakeError::UnsupportedFeature {
        table: state.id.to_string(),
        reason,
    };
    let snapshot = state
        .table
        .snapshot()
        .map_err(|source| LakeError::delta("read snapshot", state.id.url(), source))?;
    let metadata = snapshot.metadata();
    if !metadata.partition_columns().is_empty() {
        return Err(refuse(format!(
            "it is partitioned by {:?}; flightlog writes unpartitioned tables",
            metadata.partition_columns()
        )));
    }
    check_configuration(metadata.configuration()).map_err(refuse)?;
    let protocol = serde_json::to_value(snapshot.protocol()).unwrap_or_default();
    check_protocol(&protocol).map_err(refuse)?;
    let schema = serde_json::to_string(snapshot.schema().as_ref()).unwrap_or_default();
    for (marker, what) in [
        ("delta.invariants", "column invariants"),
        ("delta.generationExpression", "generated columns"),
        ("delta.identity.", "identity columns"),
        ("delta.columnMapping.", "column mapping"),
    ] {
        if schema.contains(marker) {
            return Err(refuse(format!(
                "it has {what}, which flightlog does not maintain"
            )));
        }
    }
    Ok(())
}

fn check_configuration(configuration: &HashMap<String, String>) -> Result<(), String> {
    let enabled = |key: &str| {
        configuration
            .get(key)
            .is_some_and(|value| value.eq_ignore_ascii_case("true"))
    };
    for (key, what) in [
        (
            "delta.enableChangeDataFeed",
            "change data feed (flightlog writes no change files)",
        ),
        ("delta.enableDeletionVectors", "deletion vectors"),
        ("delta.appendOnly", "append-only (upserts rewrite files)"),
    ] {
        if enabled(key) {
            return Err(format!("it has {key} = true: {what}"));
        }
    }
    let mapping = configuration.get("delta.columnMapping.mode");
    if mapping.is_some_and(|mode| !mode.eq_ignore_ascii_case("none")) {
        return Err("it uses column mapping".into());
    }
    if let Some(key) = configuration
        .keys()
        .find(|k| k.starts_with("delta.constraints."))
    {
        return Err(format!(
            "it has check constraint {key}, which flightlog does not enforce"
        ));
    }
    Ok(())
}

fn check_protocol(protocol: &serde_json::Value) -> Result<(), String> {
    let writer = protocol["minWriterVersion"].as_i64().unwrap_or(0);
    if writer > 7 {
        return Err(format!("it needs writer protocol {writer}"));
    }
    let features = protocol["writerFeatures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for feature in features {
        let name = feature.as_str().unwrap_or_default();
        if !KNOWN_WRITER_FEATURES.contains(&name) {
            return Err(format!("it uses writer feature {name:?}"));
        }
    }
    Ok(())
}

/// Checks that an object store is reachable with the given options and
/// writable at the table's prefix: lists the table's log and puts and
/// deletes one small object (`.flightlog-probe-<tag>`, hidden from Delta
/// readers). Local stores are checked on the filesystem instead.
pub async fn probe_store(table: &TableId) -> Result<(), LakeError> {
    let store = log_store(table)?.object_store(None);
    let error = |operation: &'static str| {
        move |source: object_store::Error| LakeError::Store {
            operation,
            table: table.to_string(),
            source,
        }
    };
    let log = Path::from("_delta_log");
    let mut listing = store.list(Some(&log));
    use futures::StreamExt;
    if let Some(first) = listing.next().await {
        first.map_err(error("list the table's log"))?;
    }
    drop(listing);
    let probe = Path::from(format!(".flightlog-probe-{}", table.marker_tag()));
    store
        .put(&probe, PutPayload::from_static(b"flightlog"))
        .await
        .map_err(error("write a probe object"))?;
    store
        .delete(&probe)
        .await
        .map_err(error("delete the probe object"))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn protocols_with_unknown_writer_features_are_refused() {
        let plain = serde_json::json!({"minReaderVersion": 1, "minWriterVersion": 2});
        assert!(check_protocol(&plain).is_ok());
        let ntz = serde_json::json!({"minWriterVersion": 7, "writerFeatures": ["timestampNtz"]});
        assert!(check_protocol(&ntz).is_ok());
        let dv = serde_json::json!({"minWriterVersion": 7, "writerFeatures": ["deletionVectors"]});
        assert!(check_protocol(&dv).unwrap_err().contains("deletionVectors"));
    }

    #[test]
    fn table_properties_the_writer_cannot_honour_are_refused() {
        for key in [
            "delta.enableChangeDataFeed",
            "delta.enableDeletionVectors",
            "delta.appendOnly",
        ] {
            let configuration = HashMap::from([(key.to_string(), "TRUE".to_string())]);
            assert!(check_configuration(&configuration)
                .unwrap_err()
                .contains(key));
        }
        let constraint =
            HashMap::from([("delta.constraints.positive".to_string(), "x > 0".into())]);
        assert!(check_configuration(&constraint).is_err());
        assert!(check_configuration(&HashMap::new()).is_ok());
    }
}
