//! A tiny HTTP/1.0 client for loopback endpoints (operator metrics, Jaeger): one request per
//! connection, so responses are never chunked.

use std::io::{Read, Write};

/// Sends `method path` (with an optional JSON body) to 127.0.0.1:`port`; `None` when nothing
/// answers, else the status code and the body.
pub fn request(port: u16, method: &str, path: &str, json_body: Option<&str>) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let body = json_body.unwrap_or("");
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    if json_body.is_some() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (status_line, rest) = response.split_once("\r\n")?;
    let code = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let body = rest
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Serves `body` to every GET on 127.0.0.1 (a thread, for the test's lifetime); returns the port.
pub fn serve(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    port
}
