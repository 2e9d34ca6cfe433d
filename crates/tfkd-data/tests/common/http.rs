//! A one-file HTTP server on 127.0.0.1 for the downloader's tests: `tests/download.rs` here,
//! and the runner's `tests/torchvision_teacher.rs` (which includes this file by path).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A server thread answering every request with the same body.
pub struct Server {
    /// `http://127.0.0.1:<port>/archive` (any path is served).
    pub url: String,
    /// `http://127.0.0.1:<port>/`.
    pub base: String,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Serves `body` to at most `max_requests` connections; `cut` truncates the body (with the
    /// full Content-Length announced).
    pub fn start(body: Vec<u8>, max_requests: usize, cut: Option<usize>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let paths = Arc::new(Mutex::new(Vec::new()));
        let seen = paths.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(max_requests) {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                // "GET /path HTTP/1.1": the path.
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                seen.lock().unwrap().push(path);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body[..cut.unwrap_or(body.len())]);
            }
        });
        Server { url: format!("{base}archive"), base, paths }
    }

    /// The paths requested so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }

    /// The number of requests so far.
    pub fn requests(&self) -> usize {
        self.paths.lock().unwrap().len()
    }
}
