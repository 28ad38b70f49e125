//! Column roles of one `DataSyncCommand`: which arrow field is the old or new
//! half of which key column, which carries a value, and which says whether a
//! value changed. Validated once, at `do_put` time, so that every later stage
//! (WAL, squash, Delta merge) can rely on a well-formed layout.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use arrow::row::{RowConverter, SortField};

use crate::proto::sync::{ColumnDescriptor, ColumnRole};

/// One primary key column: the logical table column and the two arrow fields
/// (old and new key) that carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyColumn {
    /// Logical table column name.
    pub name: String,
    /// Index of the arrow field with role `OLD_PK`.
    pub old_index: usize,
    /// Index of the arrow field with role `NEW_PK`.
    pub new_index: usize,
    /// Data type of both fields (they are validated to agree).
    pub data_type: DataType,
}

/// One value column: the logical table column, the arrow field carrying its
/// new value and, for partial updates, the field saying whether it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueColumn {
    /// Logical table column name.
    pub name: String,
    /// Index of the arrow field with role `VALUE`.
    pub index: usize,
    /// Data type of the `VALUE` field.
    pub data_type: DataType,
    /// Index of the Boolean arrow field with role `CHANGED` naming this column.
    pub changed_index: Option<usize>,
}

/// The validated column roles of one message schema.
///
/// Invariants (established by [`SyncLayout::from_descriptors`]): at least one
/// key column; key names distinct; value names distinct and disjoint from key
/// names; every index is below [`SyncLayout::field_count`]; every
/// `changed_index` points at a Boolean field; key types are supported by the
/// arrow row format.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncLayout {
    keys: Vec<KeyColumn>,
    values: Vec<ValueColumn>,
    /// Arrow field names, by field index (for error messages).
    field_names: Vec<String>,
}

/// Where in the command a problem is: descriptor index and arrow field name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPosition {
    /// Index into `column_descriptors` and into the arrow schema's fields.
    pub index: usize,
    /// The arrow field's name.
    pub field: String,
}

impl fmt::Display for FieldPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "column_descriptors[{}] (arrow field {:?})",
            self.index, self.field
        )
    }
}

/// A command whose column descriptors do not describe a usable change stream,
/// or do not fit the existing table. Always the client's fault: maps to
/// `InvalidArgument`, and the Display text is meant for the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LayoutError {
    #[error("column_descriptors has {descriptors} entries but the arrow schema has {fields} fields; descriptor i must describe field i")]
    DescriptorCountMismatch { descriptors: usize, fields: usize },

    #[error(
        "{at}: role {role} is not a known ColumnRole (OLD_PK=0, NEW_PK=1, CHANGED=2, VALUE=3)"
    )]
    UnknownRole { at: FieldPosition, role: i32 },

    #[error("{at}: column name is empty")]
    EmptyName { at: FieldPosition },

    #[error("{at}: duplicate {role} column {name:?}, already given by {first}")]
    DuplicateName {
        at: FieldPosition,
        role: &'static str,
        name: String,
        first: FieldPosition,
    },

    #[error("no primary key: at least one OLD_PK and one NEW_PK column are required")]
    NoKeyColumns,

    #[error("{at}: key column {name:?} has role {role} but no {missing} partner; OLD_PK and NEW_PK must name the same columns")]
    KeyWithoutPartner {
        at: FieldPosition,
        name: String,
        role: &'static str,
        missing: &'static str,
    },

    #[error("key column {name:?}: OLD_PK {old} has type {old_type} but NEW_PK {new} has type {new_type}")]
    KeyTypeMismatch {
        name: String,
        old: FieldPosition,
        // Boxed to keep `LayoutError` small on the `Ok` path.
        old_type: Box<DataType>,
        new: FieldPosition,
        new_type: Box<DataType>,
    },

    #[error(
        "{at}: key column {name:?} has type {data_type}, which cannot be used as a primary key"
    )]
    UnsupportedKeyType {
        at: FieldPosition,
        name: String,
        data_type: DataType,
    },

    #[error("{at}: CHANGED column {name:?} must be Boolean, found {data_type}")]
    ChangedNotBoolean {
        at: FieldPosition,
        name: String,
        data_type: DataType,
    },

    #[error("{at}: CHANGED column {name:?} names no VALUE column")]
    ChangedWithoutValue { at: FieldPosition, name: String },

    #[error("{at}: column {name:?} is a VALUE column and also a primary key column ({key})")]
    KeyAndValue {
        at: FieldPosition,
        name: String,
        key: FieldPosition,
    },

    #[error(
        "{at}: column {name:?} has type {data_type} but the table column has type {table_type}"
    )]
    TableTypeMismatch {
        at: FieldPosition,
        name: String,
        data_type: DataType,
        table_type: DataType,
    },

    #[error("{at}: primary key column {name:?} does not exist in the table")]
    KeyMissingFromTable { at: FieldPosition, name: String },
}

/// Descriptors sorted by role, before cross-role validation.
#[derive(Default)]
struct ByRole<'a> {
    old_keys: Vec<(usize, &'a str)>,
    new_keys: Vec<(usize, &'a str)>,
    changed: Vec<(usize, &'a str)>,
    values: Vec<(usize, &'a str)>,
}

impl SyncLayout {
    /// Validates `descriptors` against `schema` (descriptor i describes field
    /// i) and returns the column roles.
    ///
    /// Key order is the order of the `NEW_PK` descriptors. Value columns keep
    /// descriptor order. Errors name the descriptor index and arrow field.
    pub fn from_descriptors(
        descriptors: &[ColumnDescriptor],
        schema: &Schema,
    ) -> Result<SyncLayout, LayoutError> {
        if descriptors.len() != schema.fields().len() {
            return Err(LayoutError::DescriptorCountMismatch {
                descriptors: descriptors.len(),
                fields: schema.fields().len(),
            });
        }
        let by_role = sort_by_role(descriptors, schema)?;
        let keys = key_columns(&by_role, schema)?;
        let values = value_columns(&by_role, &keys, schema)?;
        Ok(SyncLayout {
            keys,
            values,
            field_names: schema.fields().iter().map(|f| f.name().clone()).collect(),
        })
    }

    /// Primary key columns, in key order.
    pub fn keys(&self) -> &[KeyColumn] {
        &self.keys
    }

    /// Value columns, in descriptor order.
    pub fn values(&self) -> &[ValueColumn] {
        &self.values
    }

    /// Number of arrow fields the layout was validated against.
    pub fn field_count(&self) -> usize {
        self.field_names.len()
    }

    /// The logical table columns this layout writes: keys (not nullable) in
    /// key order, then values (nullable). Used to create a missing table.
    pub fn table_fields(&self) -> Vec<FieldRef> {
        let keys = self
            .keys
            .iter()
            .map(|key| Arc::new(Field::new(&key.name, key.data_type.clone(), false)));
        let values = self
            .values
            .iter()
            .map(|value| Arc::new(Field::new(&value.name, value.data_type.clone(), true)));
        keys.chain(values).collect()
    }

    /// Checks the layout against an existing table's schema: every key column
    /// must exist in the table, and every column that exists must have the
    /// same type (ignoring nested field names and metadata). Value columns the
    /// table lacks are fine: they are added by schema evolution.
    pub fn check_against_table(&self, table_schema: &Schema) -> Result<(), LayoutError> {
        for key in &self.keys {
            let at = self.position(key.new_index);
            let Ok(table_field) = table_schema.field_with_name(&key.name) else {
                return Err(LayoutError::KeyMissingFromTable {
                    at,
                    name: key.name.clone(),
                });
            };
            check_type(at, &key.name, &key.data_type, table_field)?;
        }
        for value in &self.values {
            if let Ok(table_field) = table_schema.field_with_name(&value.name) {
                let at = self.position(value.index);
                check_type(at, &value.name, &value.data_type, table_field)?;
            }
        }
        Ok(())
    }

    fn position(&self, index: usize) -> FieldPosition {
        FieldPosition {
            index,
            field: self.field_names.get(index).cloned().unwrap_or_default(),
        }
    }
}

fn check_type(
    at: FieldPosition,
    name: &str,
    data_type: &DataType,
    table_field: &Field,
) -> Result<(), LayoutError> {
    if data_type.equals_datatype(table_field.data_type()) {
        Ok(())
    } else {
        Err(LayoutError::TableTypeMismatch {
            at,
            name: name.to_owned(),
            data_type: data_type.clone(),
            table_type: table_field.data_type().clone(),
        })
    }
}

fn position(schema: &Schema, index: usize) -> FieldPosition {
    FieldPosition {
        index,
        field: schema.field(index).name().clone(),
    }
}

fn role_name(role: ColumnRole) -> &'static str {
    role.as_str_name()
}

/// Checks roles and names per descriptor, and duplicates within one role.
fn sort_by_role<'a>(
    descriptors: &'a [ColumnDescriptor],
    schema: &Schema,
) -> Result<ByRole<'a>, LayoutError> {
    let mut by_role = ByRole::default();
    let mut seen: HashMap<(ColumnRole, &str), usize> = HashMap::new();
    for (index, descriptor) in descriptors.iter().enumerate() {
        let role = ColumnRole::try_from(descriptor.role).map_err(|_| LayoutError::UnknownRole {
            at: position(schema, index),
            role: descriptor.role,
        })?;
        let name = descriptor.name.as_str();
        if name.is_empty() {
            return Err(LayoutError::EmptyName {
                at: position(schema, index),
            });
        }
        if let Some(&first) = seen.get(&(role, name)) {
            return Err(LayoutError::DuplicateName {
                at: position(schema, index),
                role: role_name(role),
                name: name.to_owned(),
                first: position(schema, first),
            });
        }
        seen.insert((role, name), index);
        let list = match role {
            ColumnRole::OldPk => &mut by_role.old_keys,
            ColumnRole::NewPk => &mut by_role.new_keys,
            ColumnRole::Changed => &mut by_role.changed,
            ColumnRole::Value => &mut by_role.values,
        };
        list.push((index, name));
    }
    Ok(by_role)
}

/// Pairs OLD_PK with NEW_PK descriptors by name; key order is NEW_PK order.
fn key_columns(by_role: &ByRole<'_>, schema: &Schema) -> Result<Vec<KeyColumn>, LayoutError> {
    if by_role.new_keys.is_empty() && by_role.old_keys.is_empty() {
        return Err(LayoutError::NoKeyColumns);
    }
    let old_by_name: HashMap<&str, usize> = by_role
        .old_keys
        .iter()
        .map(|&(index, name)| (name, index))
        .collect();
    let new_by_name: HashMap<&str, usize> = by_role
        .new_keys
        .iter()
        .map(|&(index, name)| (name, index))
        .collect();
    if let Some(&(index, name)) = by_role
        .old_keys
        .iter()
        .find(|(_, name)| !new_by_name.contains_key(name))
    {
        return Err(LayoutError::KeyWithoutPartner {
            at: position(schema, index),
            name: name.to_owned(),
            role: role_name(ColumnRole::OldPk),
            missing: role_name(ColumnRole::NewPk),
        });
    }
    let mut keys = Vec::with_capacity(by_role.new_keys.len());
    for &(new_index, name) in &by_role.new_keys {
        let Some(&old_index) = old_by_name.get(name) else {
            return Err(LayoutError::KeyWithoutPartner {
                at: position(schema, new_index),
                name: name.to_owned(),
                role: role_name(ColumnRole::NewPk),
                missing: role_name(ColumnRole::OldPk),
            });
        };
        let old_type = schema.field(old_index).data_type();
        let new_type = schema.field(new_index).data_type();
        if old_type != new_type {
            return Err(LayoutError::KeyTypeMismatch {
                name: name.to_owned(),
                old: position(schema, old_index),
                old_type: Box::new(old_type.clone()),
                new: position(schema, new_index),
                new_type: Box::new(new_type.clone()),
            });
        }
        if !RowConverter::supports_fields(&[SortField::new(new_type.clone())]) {
            return Err(LayoutError::UnsupportedKeyType {
                at: position(schema, new_index),
                name: name.to_owned(),
                data_type: new_type.clone(),
            });
        }
        keys.push(KeyColumn {
            name: name.to_owned(),
            old_index,
            new_index,
            data_type: new_type.clone(),
        });
    }
    Ok(keys)
}

/// Builds value columns and attaches each CHANGED field to its VALUE field.
fn value_columns(
    by_role: &ByRole<'_>,
    keys: &[KeyColumn],
    schema: &Schema,
) -> Result<Vec<ValueColumn>, LayoutError> {
    let mut values = Vec::with_capacity(by_role.values.len());
    for &(index, name) in &by_role.values {
        if let Some(key) = keys.iter().find(|key| key.name == name) {
            return Err(LayoutError::KeyAndValue {
                at: position(schema, index),
                name: name.to_owned(),
                key: position(schema, key.new_index),
            });
        }
        values.push(ValueColumn {
            name: name.to_owned(),
            index,
            data_type: schema.field(index).data_type().clone(),
            changed_index: None,
        });
    }
    for &(index, name) in &by_role.changed {
        let data_type = schema.field(index).data_type();
        if data_type != &DataType::Boolean {
            return Err(LayoutError::ChangedNotBoolean {
                at: position(schema, index),
                name: name.to_owned(),
                data_type: data_type.clone(),
            });
        }
        let Some(value) = values.iter_mut().find(|value| value.name == name) else {
            return Err(LayoutError::ChangedWithoutValue {
                at: position(schema, index),
                name: name.to_owned(),
            });
        };
        // Duplicate CHANGED names were rejected in `sort_by_role`.
        value.changed_index = Some(index);
    }
    Ok(values)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn descriptor(role: ColumnRole, name: &str) -> ColumnDescriptor {
        ColumnDescriptor {
            role: role as i32,
            name: name.to_owned(),
        }
    }

    /// Builds descriptors and a schema from `(arrow field, role, name, type)`.
    fn command(columns: &[(&str, ColumnRole, &str, DataType)]) -> (Vec<ColumnDescriptor>, Schema) {
        let descriptors = columns
            .iter()
            .map(|(_, role, name, _)| descriptor(*role, name))
            .collect();
        let fields: Vec<Field> = columns
            .iter()
            .map(|(field, _, _, data_type)| Field::new(*field, data_type.clone(), true))
            .collect();
        (descriptors, Schema::new(fields))
    }

    fn layout(columns: &[(&str, ColumnRole, &str, DataType)]) -> Result<SyncLayout, LayoutError> {
        let (descriptors, schema) = command(columns);
        SyncLayout::from_descriptors(&descriptors, &schema)
    }

    use ColumnRole::{Changed, NewPk, OldPk, Value};
    use DataType::{Boolean, Int32, Int64, Utf8};

    #[test]
    fn composite_key_order_follows_new_pk_descriptors() {
        let layout = layout(&[
            ("old_b", OldPk, "b", Utf8),
            ("old_a", OldPk, "a", Int64),
            ("new_a", NewPk, "a", Int64),
            ("new_b", NewPk, "b", Utf8),
            ("v", Value, "v", Int32),
            ("c", Changed, "v", Boolean),
        ])
        .unwrap();
        let keys: Vec<_> = layout
            .keys()
            .iter()
            .map(|k| (k.name.as_str(), k.old_index, k.new_index))
            .collect();
        assert_eq!(keys, vec![("a", 1, 2), ("b", 0, 3)]);
        assert_eq!(layout.values().len(), 1);
        assert_eq!(layout.values()[0].index, 4);
        assert_eq!(layout.values()[0].changed_index, Some(5));
        assert_eq!(layout.field_count(), 6);
    }

    #[test]
    fn table_fields_are_keys_not_null_then_values_nullable() {
        let layout = layout(&[
            ("v", Value, "value", Utf8),
            ("o", OldPk, "id", Int64),
            ("n", NewPk, "id", Int64),
        ])
        .unwrap();
        let fields = layout.table_fields();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].as_ref(), &Field::new("id", Int64, false));
        assert_eq!(fields[1].as_ref(), &Field::new("value", Utf8, true));
    }

    #[test]
    fn descriptor_count_must_match_field_count() {
        let (mut descriptors, schema) =
            command(&[("o", OldPk, "id", Int64), ("n", NewPk, "id", Int64)]);
        descriptors.push(descriptor(Value, "v"));
        let error = SyncLayout::from_descriptors(&descriptors, &schema).unwrap_err();
        assert_eq!(
            error,
            LayoutError::DescriptorCountMismatch {
                descriptors: 3,
                fields: 2
            }
        );
    }

    #[test]
    fn unknown_role_is_rejected_naming_the_descriptor() {
        let (mut descriptors, schema) = command(&[
            ("o", OldPk, "id", Int64),
            ("n", NewPk, "id", Int64),
            ("weird", Value, "v", Int64),
        ]);
        descriptors[2].role = 7;
        let error = SyncLayout::from_descriptors(&descriptors, &schema).unwrap_err();
        assert!(matches!(error, LayoutError::UnknownRole { role: 7, .. }));
        let text = error.to_string();
        assert!(text.contains("column_descriptors[2]"), "{text}");
        assert!(text.contains("\"weird\""), "{text}");
    }

    #[test]
    fn empty_name_is_rejected() {
        let error = layout(&[("o", OldPk, "id", Int64), ("n", NewPk, "", Int64)]).unwrap_err();
        assert!(matches!(error, LayoutError::EmptyName { ref at } if at.index == 1));
    }

    #[test]
    fn duplicate_name_within_a_role_is_rejected() {
        let error = layout(&[
            ("o", OldPk, "id", Int64),
            ("n", NewPk, "id", Int64),
            ("v1", Value, "v", Int64),
            ("v2", Value, "v", Int64),
        ])
        .unwrap_err();
        let text = error.to_string();
        assert!(matches!(
            error,
            LayoutError::DuplicateName { role: "VALUE", .. }
        ));
        assert!(
            text.contains("column_descriptors[3]") && text.contains("column_descriptors[2]"),
            "{text}"
        );
    }

    #[test]
    fn two_changed_columns_for_one_value_are_rejected() {
        let error = layout(&[
            ("o", OldPk, "id", Int64),
            ("n", NewPk, "id", Int64),
            ("v", Value, "v", Int64),
            ("c1", Changed, "v", Boolean),
            ("c2", Changed, "v", Boolean),
        ])
        .unwrap_err();
        assert!(matches!(
            error,
            LayoutError::DuplicateName {
                role: "CHANGED",
                ..
            }
        ));
    }

    #[test]
    fn a_layout_without_key_is_rejected() {
        let error = layout(&[("v", Value, "v", Int64)]).unwrap_err();
        assert_eq!(error, LayoutError::NoKeyColumns);
    }

    #[test]
    fn old_and_new_key_sets_must_name_the_same_columns() {
        let error = layout(&[
            ("o", OldPk, "id", Int64),
            ("n", NewPk, "id", Int64),
            ("n2", NewPk, "id2", Int64),
        ])
        .unwrap_err();
        assert!(matches!(
            error,
            LayoutError::KeyWithoutPartner {
                role: "NEW_PK",
                missing: "OLD_PK",
                ..
            }
        ));
        let error = layout(&[
            ("o", OldPk, "id", Int64),
            ("o2", OldPk, "id2", Int64),
            ("n", NewPk, "id", Int64),
        ])
        .unwrap_err();
        assert!(matches!(
            error,
            LayoutError::KeyWithoutPartner {
                role: "OLD_PK",
                missing: "NEW_PK",
                ..
            }
        ));
        let error = layout(&[("o", OldPk, "id", Int64)]).unwrap_err();
        assert!(matches!(error, LayoutError::KeyWithoutPartner { .. }));
    }

    #[test]
    fn old_and_new_key_types_must_agree() {
        let error = layout(&[("o", OldPk, "id", Int32), ("n", NewPk, "id", Int64)]).unwrap_err();
        assert!(matches!(error, LayoutError::KeyTypeMismatch { .. }));
        assert!(error.to_string().contains("\"o\""));
    }

    #[test]
    fn changed_column_must_be_boolean() {
        let error = layout(&[
            ("o", OldPk, "id", Int64),
            ("n", NewPk, "id", Int64),
            ("v", Value, "v", Int64),
            ("c", Changed, "v", Int32),
        ])
        .unwrap_err();
        assert!(matches!(error, LayoutError::ChangedNotBoolean { .. }));
    }

    #[test]
    fn changed_column_must_name_a_value_column() {
        let error = layout(&[
            ("o", OldPk, "id", Int64),
            ("n", NewPk, "id", Int64),
            ("c", Changed, "nope", Boolean),
        ])
        .unwrap_err();
        assert!(matches!(error, LayoutError::ChangedWithoutValue { .. }));
        let error = layout(&[
            ("o", OldPk, "id", Int64),
            ("n", NewPk, "id", Int64),
            ("c", Changed, "id", Boolean),
        ])
        .unwrap_err();
        assert!(matches!(error, LayoutError::ChangedWithoutValue { .. }));
    }

    #[test]
    fn a_key_column_cannot_also_be_a_value_column() {
        let error = layout(&[
            ("o", OldPk, "id", Int64),
            ("n", NewPk, "id", Int64),
            ("v", Value, "id", Int64),
        ])
        .unwrap_err();
        assert!(matches!(error, LayoutError::KeyAndValue { .. }));
    }

    fn id_value_layout() -> SyncLayout {
        layout(&[
            ("o", OldPk, "id", Int64),
            ("n", NewPk, "id", Int64),
            ("v", Value, "value", Utf8),
        ])
        .unwrap()
    }

    #[test]
    fn table_check_accepts_new_value_columns() {
        let table = Schema::new(vec![
            Field::new("id", Int64, false),
            Field::new("other", Int32, true),
        ]);
        id_value_layout().check_against_table(&table).unwrap();
    }

    #[test]
    fn table_check_rejects_a_type_conflict() {
        let table = Schema::new(vec![
            Field::new("id", Int64, false),
            Field::new("value", Int32, true),
        ]);
        let error = id_value_layout().check_against_table(&table).unwrap_err();
        assert!(
            matches!(error, LayoutError::TableTypeMismatch { ref name, .. } if name == "value")
        );
        let text = error.to_string();
        assert!(
            text.contains("column_descriptors[2]") && text.contains("\"v\""),
            "{text}"
        );
        let table = Schema::new(vec![Field::new("id", Int32, false)]);
        let error = id_value_layout().check_against_table(&table).unwrap_err();
        assert!(matches!(error, LayoutError::TableTypeMismatch { ref name, .. } if name == "id"));
    }

    #[test]
    fn table_check_rejects_a_key_column_missing_from_the_table() {
        let table = Schema::new(vec![Field::new("value", Utf8, true)]);
        let error = id_value_layout().check_against_table(&table).unwrap_err();
        assert!(matches!(error, LayoutError::KeyMissingFromTable { ref name, .. } if name == "id"));
    }
}
