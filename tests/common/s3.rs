//! The S3 server of the tests: `moto_server` started on a free port of
//! 127.0.0.1 (skipped, with the reason printed, when it is not installed;
//! `.ci/run` installs it), a bucket, and the object_store options that reach
//! it. One launcher for every test that needs S3.

use std::collections::HashMap;
use std::time::Instant;

/// A moto S3 server on a free port, killed on drop.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_moto() -> Option<Moto> {
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("moto_server").is_file())
    });
    if !on_path {
        println!("skipped: moto_server is not on PATH");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(moto);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!("skipped: moto_server did not start listening");
    None
}

/// A path-style, unsigned `PUT /bucket` (moto accepts it).
pub fn create_bucket(endpoint: &str, bucket: &str) {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect to moto");
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .expect("send PUT bucket");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the answer");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

pub fn s3_options(endpoint: &str) -> HashMap<String, String> {
    HashMap::from([
        ("aws_endpoint_url".to_owned(), endpoint.to_owned()),
        ("aws_region".to_owned(), "us-east-1".to_owned()),
        ("aws_access_key_id".to_owned(), "test".to_owned()),
        ("aws_secret_access_key".to_owned(), "test".to_owned()),
        ("aws_allow_http".to_owned(), "true".to_owned()),
    ])
}
