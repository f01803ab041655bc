//! A hand-written HTTP/1.1 client, for requests a client library would rewrite (paths with
//! `..`, chunked bodies) and for the S3 server's plain requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The status code and body of a hand-written HTTP/1.1 request. Used where a client
/// library would rewrite the request: paths with `..`, chunked bodies.
pub fn raw_request(address: &str, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to datx");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    stream.write_all(head.as_bytes()).expect("send the head");
    // The server may answer and close before the whole body is sent (413): that is fine.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Reads one request from a client: its head (request line and headers) and its body,
/// which must have a `Content-Length` (as every client of these tests sends).
pub fn read_request(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        client.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    client.read_exact(&mut body).ok()?;
    Some((head, body))
}
