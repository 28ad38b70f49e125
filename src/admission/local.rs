//! Filesystem checks of a table on a `file://` store, made once before its
//! first put is acknowledged: the table directory must be creatable and
//! writable, lie outside the node's own directories, sit below no regular
//! file, symbolic link or other Delta table, and the store root must be a
//! directory that is not itself a table. Blocking I/O: run off the runtime.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::identity::TableId;

/// Which command field a local problem is about, what was being checked,
/// and why it failed.
#[derive(Debug)]
pub(crate) struct LocalProblem {
    pub(crate) field: &'static str,
    pub(crate) what: String,
    pub(crate) error: std::io::Error,
}

fn problem(field: &'static str, what: String, error: std::io::Error) -> LocalProblem {
    LocalProblem { field, what, error }
}

fn rule(field: &'static str, what: String) -> LocalProblem {
    problem(
        field,
        what,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "refused"),
    )
}

/// The longest existing ancestor of `path` with symbolic links resolved,
/// joined with the part that does not exist yet: two spellings of one
/// directory through a link become one path.
pub(crate) fn resolve_links(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(resolved) = std::fs::canonicalize(&existing) {
            let mut out = resolved;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Runs every check; `protected` are the node's own directories.
pub(crate) fn check_table(table: &TableId, protected: &[PathBuf]) -> Result<(), LocalProblem> {
    let (Some(root), Some(dir)) = (table.store().local_dir(), table.local_dir()) else {
        return Ok(());
    };
    for own in protected {
        if dir.starts_with(own) || own.starts_with(&dir) {
            return Err(rule(
                "path",
                format!(
                    "table directory {} overlaps the node's own directory {}",
                    dir.display(),
                    own.display()
                ),
            ));
        }
    }
    match std::fs::metadata(&root) {
        Ok(meta) if !meta.is_dir() => {
            return Err(rule(
                "store.location",
                format!("store root {} is a file, not a directory", root.display()),
            ))
        }
        Ok(_) if root.join("_delta_log").exists() => {
            return Err(rule(
                "store.location",
                format!("store root {} is itself a Delta table", root.display()),
            ))
        }
        _ => {}
    }
    check_components(&root, table, &dir)?;
    std::fs::create_dir_all(&dir).map_err(|error| {
        problem(
            "path",
            format!("cannot create table directory {}", dir.display()),
            error,
        )
    })?;
    // A name of its own per check: concurrent first puts to one table check
    // it at the same time, and with one shared name one check removed the
    // file another was about to remove (NotFound, refused as unwritable).
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let probe_number = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(
        ".flightlog-probe-{}-{}-{probe_number}",
        table.marker_tag(),
        std::process::id()
    ));
    let written = std::fs::File::create(&probe)
        .and_then(|mut file| file.write_all(b"flightlog"))
        .and_then(|()| std::fs::remove_file(&probe));
    written.map_err(|error| {
        problem(
            "path",
            format!("cannot write in table directory {}", dir.display()),
            error,
        )
    })
}

/// Every existing component below the root must be a real directory and,
/// above the table itself, not a Delta table.
fn check_components(root: &Path, table: &TableId, dir: &Path) -> Result<(), LocalProblem> {
    let mut path = root.to_path_buf();
    for segment in table.path().segments() {
        path.push(segment);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(problem(
                    "path",
                    format!("cannot inspect {}", path.display()),
                    error,
                ))
            }
        };
        if meta.file_type().is_symlink() {
            return Err(rule(
                "path",
                format!(
                    "{} is a symbolic link; a table path must stay inside its store",
                    path.display()
                ),
            ));
        }
        if !meta.is_dir() {
            return Err(rule(
                "path",
                format!("{} is a file, not a directory", path.display()),
            ));
        }
        if path != dir && path.join("_delta_log").exists() {
            return Err(rule(
                "path",
                format!(
                    "{} is a Delta table; a table cannot be nested in another",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::identity::{StoreRoot, TablePath};

    fn table(root: &Path, path: &str) -> TableId {
        TableId::new(
            StoreRoot::local(root).unwrap(),
            TablePath::parse(path).unwrap(),
        )
    }

    #[test]
    fn a_path_below_a_file_a_link_or_another_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lake");
        std::fs::create_dir_all(root.join("outer/_delta_log")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("link")).unwrap();
        for (path, expected) in [
            ("file/t", "is a file"),
            ("file", "is a file"),
            ("link/t", "symbolic link"),
            ("outer/inner", "nested"),
        ] {
            let error = check_table(&table(&root, path), &[]).unwrap_err();
            assert!(error.what.contains(expected), "{path}: {error:?}");
        }
        check_table(&table(&root, "fine/t"), &[]).unwrap();
        assert!(root.join("fine/t").is_dir());
        assert_eq!(std::fs::read_dir(root.join("fine/t")).unwrap().count(), 0);
    }

    #[test]
    fn the_node_directories_and_a_file_as_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("data/wal");
        std::fs::create_dir_all(&wal).unwrap();
        let error = check_table(
            &table(&dir.path().join("data"), "wal/t"),
            std::slice::from_ref(&wal),
        )
        .unwrap_err();
        assert!(error.what.contains("overlaps"), "{error:?}");
        let error = check_table(&table(dir.path(), "data"), &[wal]).unwrap_err();
        assert!(error.what.contains("overlaps"), "{error:?}");
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        let error = check_table(&table(&dir.path().join("plain"), "t"), &[]).unwrap_err();
        assert_eq!(error.field, "store.location");
    }

    #[test]
    fn links_in_the_store_root_resolve_to_one_directory() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("alias")).unwrap();
        let resolved = resolve_links(&dir.path().join("alias/lake/new"));
        assert_eq!(
            resolved,
            std::fs::canonicalize(&real).unwrap().join("lake/new")
        );
    }
}
