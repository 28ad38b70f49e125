//! A published table's shape (key and value columns with their types) and
//! the row changes of one table turned into the protocol's row encoding:
//! for each key column an `OLD_PK` and a `NEW_PK` field, for each other
//! column a `VALUE` field and its `CHANGED` partner (false for an unchanged
//! TOASTed value). Arrow field names are `f0, f1, ...`; the descriptors carry
//! the Postgres column names, so no column name can collide with ours.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use crate::proto::sync::{ColumnDescriptor, ColumnRole};
use crate::replicate::pgoutput::{Datum, Tuple};
use crate::replicate::types::{ColumnBuilder, PgType};
use crate::replicate::ReplicateError;

/// One column as the catalog or a Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    pub is_key: bool,
    /// The type's SQL name when known (the catalog has it, a Relation
    /// message only the oid).
    pub type_name: Option<String>,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    pg_type: PgType,
    /// Position in the relation's tuples.
    position: usize,
}

/// A table the replicator can carry: it has a key and only supported types.
#[derive(Debug, Clone)]
pub struct TableShape {
    /// `<schema>/<table>`, the Delta table's path under the node's store.
    pub path: String,
    /// `schema.table`, for messages.
    pub name: String,
    keys: Vec<Column>,
    values: Vec<Column>,
    /// Columns in the relation's tuples.
    width: usize,
    schema: SchemaRef,
    descriptors: Vec<ColumnDescriptor>,
}

/// Why a published table is not carried (refused by name, not an error
/// that stops the replicator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoKey { replica_identity: char },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoKey { replica_identity } => write!(
                f,
                "no primary key (replica identity {replica_identity:?}); add a primary key \
                 (replica identity default) or remove the table from the publication"
            ),
        }
    }
}

impl TableShape {
    /// The shape of `namespace.table`, `Ok(Err(refusal))` for a table
    /// without a usable key, `Err` for an unsupported column type.
    pub fn new(
        namespace: &str,
        table: &str,
        replica_identity: u8,
        columns: &[ColumnInfo],
    ) -> Result<Result<TableShape, Refusal>, ReplicateError> {
        let name = format!("{namespace}.{table}");
        let has_key = columns.iter().any(|c| c.is_key);
        // Replica identity full marks every column: there is no key to
        // upsert by, and updates would carry whole old rows.
        if !matches!(replica_identity, b'd' | b'i') || !has_key {
            return Ok(Err(Refusal::NoKey {
                replica_identity: char::from(replica_identity),
            }));
        }
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for (position, info) in columns.iter().enumerate() {
            let pg_type = PgType::from_oid(info.type_oid, info.type_modifier).map_err(|t| {
                ReplicateError::UnsupportedType {
                    table: name.clone(),
                    column: info.name.clone(),
                    pg_type: info.type_name.clone().unwrap_or(t),
                }
            })?;
            let column = Column {
                name: info.name.clone(),
                pg_type,
                position,
            };
            if info.is_key {
                keys.push(column);
            } else {
                values.push(column);
            }
        }
        let mut fields = Vec::new();
        let mut descriptors = Vec::new();
        let mut push = |role: ColumnRole, name: &str, data_type: DataType| {
            fields.push(Field::new(format!("f{}", fields.len()), data_type, true));
            descriptors.push(ColumnDescriptor {
                role: role as i32,
                name: name.to_string(),
            });
        };
        for key in &keys {
            push(ColumnRole::OldPk, &key.name, key.pg_type.arrow_type());
        }
        for key in &keys {
            push(ColumnRole::NewPk, &key.name, key.pg_type.arrow_type());
        }
        for value in &values {
            push(ColumnRole::Value, &value.name, value.pg_type.arrow_type());
            push(ColumnRole::Changed, &value.name, DataType::Boolean);
        }
        Ok(Ok(TableShape {
            path: format!("{namespace}/{table}"),
            name,
            keys,
            values,
            width: columns.len(),
            schema: Arc::new(Schema::new(fields)),
            descriptors,
        }))
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    pub fn descriptors(&self) -> &[ColumnDescriptor] {
        &self.descriptors
    }

    /// The key of `tuple` (an old key tuple or a full row).
    pub fn key_of(&self, tuple: &Tuple) -> Result<Vec<Bytes>, ReplicateError> {
        self.check_width(tuple)?;
        self.keys
            .iter()
            .map(|key| match &tuple[key.position] {
                Datum::Text(text) => Ok(text.clone()),
                other => Err(ReplicateError::Malformed(format!(
                    "table {}: key column {} is {other:?}, not a value",
                    self.name, key.name
                ))),
            })
            .collect()
    }

    fn check_width(&self, tuple: &Tuple) -> Result<(), ReplicateError> {
        if tuple.len() != self.width {
            return Err(ReplicateError::Malformed(format!(
                "table {}: a row has {} columns, the relation {}",
                self.name,
                tuple.len(),
                self.width
            )));
        }
        Ok(())
    }

    pub fn insert(&self, new: Tuple) -> Result<Change, ReplicateError> {
        Ok(Change {
            old_key: None,
            new_key: Some(self.key_of(&new)?),
            row: Some(new),
        })
    }

    /// An update; `old_key` is the `K` tuple when the key changed.
    pub fn update(&self, old_key: Option<&Tuple>, new: Tuple) -> Result<Change, ReplicateError> {
        let new_key = self.key_of(&new)?;
        let old_key = match old_key {
            Some(old) => self.key_of(old)?,
            None => new_key.clone(),
        };
        Ok(Change {
            old_key: Some(old_key),
            new_key: Some(new_key),
            row: Some(new),
        })
    }

    pub fn delete(&self, old_key: &Tuple) -> Result<Change, ReplicateError> {
        Ok(Change {
            old_key: Some(self.key_of(old_key)?),
            new_key: None,
            row: None,
        })
    }

    /// The batch of `changes` (in order) in this shape's schema.
    pub fn batch(&self, changes: &[Change]) -> Result<RecordBatch, ReplicateError> {
        let rows = changes.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for pick_old in [true, false] {
            for (index, key) in self.keys.iter().enumerate() {
                let mut builder = ColumnBuilder::new(key.pg_type, rows);
                for change in changes {
                    let key_values = if pick_old {
                        &change.old_key
                    } else {
                        &change.new_key
                    };
                    let text = key_values.as_ref().map(|k| &k[index]);
                    let text = text.map(|t| self.text(t, &key.name)).transpose()?;
                    builder
                        .append(text)
                        .map_err(|reason| self.bad_value(&key.name, key.pg_type, reason))?;
                }
                columns.push(self.finish(builder, &key.name, key.pg_type)?);
            }
        }
        for value in &self.values {
            let mut builder = ColumnBuilder::new(value.pg_type, rows);
            let mut changed = BooleanBuilder::with_capacity(rows);
            for change in changes {
                let datum = change.row.as_ref().map(|row| &row[value.position]);
                match datum {
                    Some(Datum::Text(text)) => {
                        let text = self.text(text, &value.name)?;
                        builder
                            .append(Some(text))
                            .map_err(|reason| self.bad_value(&value.name, value.pg_type, reason))?;
                        changed.append_value(true);
                    }
                    Some(Datum::Binary(_)) => {
                        return Err(ReplicateError::Malformed(format!(
                        "table {}: column {} arrived in binary form (the replicator asks for text)",
                        self.name, value.name
                    )))
                    }
                    Some(Datum::Unchanged) => {
                        builder.append_null();
                        changed.append_value(false);
                    }
                    Some(Datum::Null) | None => {
                        builder.append_null();
                        changed.append_value(true);
                    }
                }
            }
            columns.push(self.finish(builder, &value.name, value.pg_type)?);
            columns.push(Arc::new(changed.finish()));
        }
        RecordBatch::try_new(self.schema(), columns)
            .map_err(|e| ReplicateError::Malformed(format!("table {}: {e}", self.name)))
    }

    fn text<'b>(&self, bytes: &'b Bytes, column: &str) -> Result<&'b str, ReplicateError> {
        std::str::from_utf8(bytes).map_err(|_| {
            ReplicateError::Malformed(format!(
                "table {}: column {column} is not UTF-8 text",
                self.name
            ))
        })
    }

    fn finish(
        &self,
        builder: ColumnBuilder,
        column: &str,
        pg_type: PgType,
    ) -> Result<ArrayRef, ReplicateError> {
        builder
            .finish()
            .map_err(|reason| self.bad_value(column, pg_type, reason))
    }

    fn bad_value(&self, column: &str, pg_type: PgType, reason: String) -> ReplicateError {
        ReplicateError::BadValue {
            table: self.name.clone(),
            column: column.to_string(),
            pg_type: format!("{pg_type:?}"),
            reason,
        }
    }
}

/// One row change of a table, in the relation's terms.
#[derive(Debug, Clone)]
pub struct Change {
    old_key: Option<Vec<Bytes>>,
    new_key: Option<Vec<Bytes>>,
    row: Option<Tuple>,
}

impl Change {
    /// Bytes this change holds (for buffer limits).
    pub fn bytes(&self) -> usize {
        let key = |k: &Option<Vec<Bytes>>| k.as_ref().map_or(0, |k| k.iter().map(Bytes::len).sum());
        let row = self.row.as_ref().map_or(0, |row| {
            row.iter()
                .map(|d| match d {
                    Datum::Text(b) | Datum::Binary(b) => b.len() + 8,
                    _ => 8,
                })
                .sum()
        });
        key(&self.old_key) + key(&self.new_key) + row
    }
}
