//! What the node knows of each table's columns and key, so a message that
//! could never be flushed is refused at put, not discovered at flush.
//!
//! Sources: the table in the store (read once per table at admission), the
//! frames of the WAL (at recovery), and puts. A put *claims* its columns
//! while it streams; the claim becomes knowledge when its rows are in the WAL
//! and is dropped otherwise, so a refused put never fixes a column's type.
//! Column names are compared case-insensitively, as Delta does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::datatypes::{DataType, Field, FieldRef, Schema};

use crate::identity::TableId;
use crate::sync::layout::SyncLayout;

/// The column `field` names (case-insensitively), added as `field` says if
/// it is new.
fn known_column<'a>(
    columns: &'a mut HashMap<String, KnownColumn>,
    field: &Field,
    accepted: bool,
) -> &'a mut KnownColumn {
    columns
        .entry(field.name().to_lowercase())
        .or_insert_with(|| KnownColumn {
            name: field.name().clone(),
            data_type: field.data_type().clone(),
            accepted,
            in_flight: 0,
        })
}

/// Longest column name, in bytes (as long as a path segment; Hive-style
/// catalogs take at most 128 characters, Delta itself sets no limit).
pub const COLUMN_NAME_BYTES_MAX: usize = 255;

/// Column names free of control characters, at most
/// [`COLUMN_NAME_BYTES_MAX`] bytes, and distinct ignoring case.
fn distinct_names(fields: &[FieldRef]) -> Result<(), SchemaConflict> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for field in fields {
        let name = field.name();
        if name.len() > COLUMN_NAME_BYTES_MAX {
            let start: String = name.chars().take(40).collect();
            return Err(SchemaConflict(format!(
                "column {start:?}... is {} bytes long; at most {COLUMN_NAME_BYTES_MAX}",
                name.len()
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(SchemaConflict(format!(
                "column {name:?} contains a control character"
            )));
        }
        if let Some(first) = seen.insert(name.to_lowercase(), name) {
            return Err(SchemaConflict(format!(
                "columns {first:?} and {name:?} differ only in case; Delta column names are case-insensitive"
            )));
        }
    }
    Ok(())
}

/// One column as known: its spelling, stored type, and who vouches for it.
#[derive(Debug, Clone)]
struct KnownColumn {
    name: String,
    data_type: DataType,
    /// The store has it, or an accepted put wrote rows with it.
    accepted: bool,
    /// Puts in flight that claim it.
    in_flight: usize,
}

/// The key column names of a table (lowercase, sorted), with the same
/// accepted / in-flight accounting.
#[derive(Debug, Clone)]
struct KnownKey {
    names: Vec<String>,
    spelled: Vec<String>,
    accepted: bool,
    in_flight: usize,
}

#[derive(Debug, Default)]
struct TableKnowledge {
    /// By lowercase name.
    columns: HashMap<String, KnownColumn>,
    key: Option<KnownKey>,
    /// The table exists in the store (so a key cannot be new columns).
    in_store: bool,
}

/// Column and key knowledge of every table. Cheap handle.
#[derive(Debug, Clone, Default)]
pub struct SchemaKnowledge {
    tables: Arc<Mutex<HashMap<TableId, TableKnowledge>>>,
}

/// A put's claim on its columns and key; released (or made knowledge by
/// [`TypeClaim::accept`]) when dropped.
#[derive(Debug)]
pub struct TypeClaim {
    knowledge: SchemaKnowledge,
    table: TableId,
    columns: Vec<String>,
    key: bool,
    accepted: bool,
}

impl TypeClaim {
    /// The put's rows are in the WAL: its columns are now known.
    pub fn accept(mut self) {
        self.accepted = true;
    }
}

impl Drop for TypeClaim {
    fn drop(&mut self) {
        let mut tables = self.knowledge.lock();
        let Some(known) = tables.get_mut(&self.table) else {
            return;
        };
        for column in &self.columns {
            if let Some(entry) = known.columns.get_mut(column) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                entry.accepted |= self.accepted;
                if !entry.accepted && entry.in_flight == 0 {
                    known.columns.remove(column);
                }
            }
        }
        if self.key {
            if let Some(key) = &mut known.key {
                key.in_flight = key.in_flight.saturating_sub(1);
                key.accepted |= self.accepted;
                if !key.accepted && key.in_flight == 0 {
                    known.key = None;
                }
            }
        }
    }
}

/// Why a layout does not fit what is known of its table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaConflict(pub String);

impl SchemaKnowledge {
    fn lock(&self) -> MutexGuard<'_, HashMap<TableId, TableKnowledge>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `layout` (already in stored types) against the table and
    /// claims its columns and key: column names distinct ignoring case and
    /// free of control characters; each column's type that of the table;
    /// the key the table's key (or, for a table the node has not written,
    /// existing columns).
    pub fn claim(&self, table: &TableId, layout: &SyncLayout) -> Result<TypeClaim, SchemaConflict> {
        let conflict = |text: String| Err(SchemaConflict(text));
        let fields = layout.table_fields();
        distinct_names(&fields)?;
        let mut tables = self.lock();
        let known = tables.entry(table.clone()).or_default();
        for field in &fields {
            if let Some(existing) = known.columns.get(&field.name().to_lowercase()) {
                if existing.name != *field.name() {
                    return conflict(format!(
                        "column {:?}: table {table} has it as {:?} (Delta column names are case-insensitive)",
                        field.name(),
                        existing.name
                    ));
                }
                if existing.data_type != *field.data_type() {
                    return conflict(format!(
                        "column {:?} is stored as {} but table {table} already has it as {}",
                        field.name(),
                        field.data_type(),
                        existing.data_type
                    ));
                }
            }
        }
        let spelled: Vec<String> = layout.keys().iter().map(|k| k.name.clone()).collect();
        let mut names: Vec<String> = spelled.iter().map(|k| k.to_lowercase()).collect();
        names.sort();
        match &known.key {
            Some(key) if key.names != names => {
                return conflict(format!(
                    "table {table} has primary key ({}); this message uses ({})",
                    key.spelled.join(", "),
                    spelled.join(", ")
                ))
            }
            None if known.in_store => {
                if let Some(missing) = names.iter().find(|k| !known.columns.contains_key(*k)) {
                    return conflict(format!(
                        "key column {missing:?} is not a column of table {table}; a key column cannot be added to an existing table"
                    ));
                }
            }
            _ => {}
        }
        for field in &fields {
            known_column(&mut known.columns, field, false).in_flight += 1;
        }
        known
            .key
            .get_or_insert(KnownKey {
                names,
                spelled,
                accepted: false,
                in_flight: 0,
            })
            .in_flight += 1;
        Ok(TypeClaim {
            knowledge: self.clone(),
            table: table.clone(),
            columns: fields.iter().map(|f| f.name().to_lowercase()).collect(),
            key: true,
            accepted: false,
        })
    }

    /// The columns the table has in the store (read at admission).
    pub fn learn_from_store(&self, table: &TableId, schema: &Schema) {
        let mut tables = self.lock();
        let known = tables.entry(table.clone()).or_default();
        known.in_store = true;
        for field in schema.fields() {
            known_column(&mut known.columns, field, true);
        }
    }

    /// At recovery: the columns and key of an accepted frame.
    pub fn learn_from_frame(&self, table: &TableId, layout: &SyncLayout) {
        if let Ok(claim) = self.claim(table, layout) {
            claim.accept();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::identity::{StoreRoot, TablePath};
    use crate::proto::sync::{ColumnDescriptor, ColumnRole};
    use arrow::datatypes::Field;

    fn table() -> TableId {
        TableId::new(
            StoreRoot::parse("file:///lake", &Default::default()).unwrap(),
            TablePath::parse("t").unwrap(),
        )
    }

    fn layout(keys: &[&str], values: &[(&str, DataType)]) -> SyncLayout {
        let mut descriptors = Vec::new();
        let mut fields = Vec::new();
        for key in keys {
            for role in [ColumnRole::OldPk, ColumnRole::NewPk] {
                descriptors.push(ColumnDescriptor {
                    role: role as i32,
                    name: key.to_string(),
                });
                fields.push(Field::new(
                    format!("{key}{}", role as i32),
                    DataType::Int64,
                    true,
                ));
            }
        }
        for (name, data_type) in values {
            descriptors.push(ColumnDescriptor {
                role: ColumnRole::Value as i32,
                name: name.to_string(),
            });
            fields.push(Field::new(*name, data_type.clone(), true));
        }
        SyncLayout::from_descriptors(&descriptors, &Schema::new(fields)).unwrap()
    }

    #[test]
    fn columns_that_differ_only_in_case_are_refused() {
        let knowledge = SchemaKnowledge::default();
        let error = knowledge
            .claim(
                &table(),
                &layout(&["id"], &[("v", DataType::Utf8), ("V", DataType::Utf8)]),
            )
            .unwrap_err();
        assert!(error.0.contains("differ only in case"), "{error}");
        knowledge
            .claim(&table(), &layout(&["id"], &[("v", DataType::Utf8)]))
            .unwrap()
            .accept();
        let error = knowledge
            .claim(&table(), &layout(&["id"], &[("V", DataType::Utf8)]))
            .unwrap_err();
        assert!(error.0.contains("has it as \"v\""), "{error}");
    }

    #[test]
    fn the_key_is_fixed_by_the_first_accepted_put_and_a_refused_put_fixes_nothing() {
        let knowledge = SchemaKnowledge::default();
        let claim = knowledge
            .claim(&table(), &layout(&["a"], &[("v", DataType::Int32)]))
            .unwrap();
        drop(claim);
        // The refused first put left nothing behind: another key and type work.
        knowledge
            .claim(&table(), &layout(&["a", "b"], &[("v", DataType::Utf8)]))
            .unwrap()
            .accept();
        let error = knowledge.claim(&table(), &layout(&["a"], &[])).unwrap_err();
        assert!(error.0.contains("primary key (a, b)"), "{error}");
        let error = knowledge
            .claim(&table(), &layout(&["b", "a"], &[("v", DataType::Int32)]))
            .unwrap_err();
        assert!(error.0.contains("already has it as Utf8"), "{error}");
    }

    #[test]
    fn a_table_in_the_store_takes_no_new_key_column() {
        let knowledge = SchemaKnowledge::default();
        knowledge.learn_from_store(
            &table(),
            &Schema::new(vec![Field::new("id", DataType::Int64, false)]),
        );
        let error = knowledge
            .claim(&table(), &layout(&["id", "extra"], &[]))
            .unwrap_err();
        assert!(error.0.contains("\"extra\" is not a column"), "{error}");
        assert!(knowledge
            .claim(&table(), &layout(&["id"], &[("new", DataType::Utf8)]))
            .is_ok());
    }
}
