//! A real HTTP/1.1 server on loopback that serves scripted feed responses.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// What the server answers on a path.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    #[must_use]
    pub fn json(body: &[u8]) -> Self {
        Self {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_vec(),
            delay: Duration::ZERO,
        }
    }

    #[must_use]
    pub fn version(version: &str) -> Self {
        Self::json(format!(r#"{{"instance": "Worldwide", "latest": "{version}"}}"#).as_bytes())
    }

    #[must_use]
    pub fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "text/html".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }

    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    #[must_use]
    pub const fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Routes = Arc<Mutex<HashMap<String, Reply>>>;

/// Serves until dropped. A request is matched by its path and query string, without the
/// `clientrequestid` every request carries (`/endpoints/Worldwide?ServiceAreas=Skype` is
/// another route than `/endpoints/Worldwide`, as it is another answer from Microsoft's
/// service); every request target is recorded.
pub struct FeedServer {
    addr: SocketAddr,
    routes: Routes,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FeedServer {
    /// Serves on 127.0.0.1 in the caller's network namespace.
    ///
    /// # Panics
    ///
    /// When loopback cannot be bound.
    #[must_use]
    pub fn start() -> Self {
        Self::serve(TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
    }

    /// Serves on a listener bound elsewhere (in another network namespace).
    ///
    /// # Panics
    ///
    /// When the listener has no address.
    #[must_use]
    pub fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("bound");
        let routes: Routes = Arc::default();
        let requests = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let server = Self {
            addr,
            routes: Arc::clone(&routes),
            requests: Arc::clone(&requests),
            stop: Arc::clone(&stop),
        };
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let routes = Arc::clone(&routes);
                let requests = Arc::clone(&requests);
                thread::spawn(move || {
                    let _ = answer(stream, &routes, &requests);
                });
            }
        });
        server
    }

    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the reply for `path` (e.g. `/version/Worldwide`).
    ///
    /// # Panics
    ///
    /// When a serving thread panicked.
    pub fn set(&self, path: &str, reply: Reply) {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_owned(), reply);
    }

    /// The request targets seen so far, query strings included.
    ///
    /// # Panics
    ///
    /// When a serving thread panicked.
    #[must_use]
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// `target` without the `clientrequestid` parameter.
fn route_key(target: &str) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("clientrequestid="))
        .collect();
    if rest.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", rest.join("&"))
    }
}

fn answer(
    stream: TcpStream,
    routes: &Routes,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut if_none_match = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("if-none-match")
        {
            if_none_match = Some(value.trim().to_owned());
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    requests.lock().expect("requests").push(target.clone());
    let reply = routes
        .lock()
        .expect("routes")
        .get(&route_key(&target))
        .cloned()
        .unwrap_or_else(|| Reply::status(404, "not found"));
    thread::sleep(reply.delay);
    // A conditional GET whose ETag still holds: 304 and no body, as a real server answers.
    let etag = reply
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("etag"))
        .map(|(_, value)| value.clone());
    let reply = if if_none_match.is_some() && if_none_match == etag {
        requests
            .lock()
            .expect("requests")
            .push(format!("304 {target}"));
        Reply {
            status: 304,
            headers: reply.headers,
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    } else {
        reply
    };
    let mut stream = stream;
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&reply.body)?;
    stream.flush()
}
