//! One Python for every test that speaks through clients we did not write:
//! `FLIGHTLOG_PYTHON` if set, otherwise a venv made once under the cargo
//! target directory (`<target>/tmp/flightlog-python`), into which each test
//! installs what it imports (`pyarrow`, `deltalake`, ...). A file lock keeps
//! concurrent tests from building it twice. When it cannot be had (no
//! python3, no network) the caller gets the reason and prints it as a skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A pip requirement and the module it provides.
pub type Package<'a> = (&'a str, &'a str);

pub const PYARROW: Package<'static> = ("pyarrow", "pyarrow.flight");
pub const DELTALAKE: Package<'static> = ("deltalake", "deltalake");

fn imports(python: &Path, packages: &[Package<'_>]) -> bool {
    let modules: Vec<&str> = packages.iter().map(|(_, module)| *module).collect();
    Command::new(python)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// An interpreter that imports every one of `packages`, or why there is none.
pub fn python_with(packages: &[Package<'_>]) -> Result<PathBuf, String> {
    if let Some(python) = std::env::var_os("FLIGHTLOG_PYTHON") {
        let python = PathBuf::from(python);
        return if imports(&python, packages) {
            Ok(python)
        } else {
            Err(format!(
                "FLIGHTLOG_PYTHON={} lacks {packages:?}",
                python.display()
            ))
        };
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flightlog-python");
    let python = venv.join("bin").join("python");
    if imports(&python, packages) {
        return Ok(python);
    }
    std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).map_err(|e| e.to_string())?;
    let lock = std::fs::File::create(venv.with_extension("lock")).map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| format!("lock the venv: {e}"))?;
    if imports(&python, packages) {
        return Ok(python);
    }
    if !python.exists() {
        run_bounded(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            Duration::from_secs(120),
        )
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    }
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    pip.args(packages.iter().map(|(requirement, _)| *requirement));
    run_bounded(&mut pip, Duration::from_secs(600)).map_err(|e| format!("pip install: {e}"))?;
    if imports(&python, packages) {
        Ok(python)
    } else {
        Err(format!("{packages:?} installed but do not import"))
    }
}

/// Runs `command` to completion within `limit`, its stderr kept for errors.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Result<(), String> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if status.success() {
                return Ok(());
            }
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return Err(format!("{status}: {}", stderr.trim()));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no answer within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The repository's `tests/python/<name>`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}
