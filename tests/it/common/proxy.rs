//! A fault-injecting HTTP/1.1 proxy in front of moto: answers throttling or server errors,
//! delays responses or drops connections for the requests a rule matches, forwards the rest.
//!
//! Plain std threads (one per client connection) keep it independent of any runtime; every
//! socket has a read timeout, so threads end soon after the proxy is dropped.
//!
//! [`FaultProxy::start_chaos`] adds random faults, from a seeded generator so a failing soak
//! run can be replayed, to the requests no rule matches.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What to do with a matching request.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// `503 SlowDown` for the first `n` matches, forwarded afterwards.
    SlowDown(usize),
    /// `500 InternalError` every time.
    InternalError,
    /// The first `first` matches forwarded only after `by` (a stalled server), later ones at once.
    Delay { first: usize, by: Duration },
    /// The first `first` matches reach moto at once, but its answer is held for `by`: the
    /// request has taken effect and the client does not know yet (a slow or congested path).
    DelayAnswer { first: usize, by: Duration },
    /// Forwarded untouched; the rule only counts.
    Pass,
    /// Connection closed without a response, every time.
    Drop,
    /// Forwarded, the answer relayed at this many bytes a second (a slow link), every time.
    Throttle { bytes_per_sec: usize },
    /// The first `n` matches reach moto, but its answer is discarded and the connection
    /// closed: the request happened, the client cannot know. Forwarded afterwards.
    DropResponse(usize),
    /// The first `n` matches are answered `204 No Content` without reaching moto: the client
    /// is told it worked and nothing changed (as when AWS accepts an abort while a part
    /// upload is still landing, which "might be necessary to abort multiple times").
    /// Forwarded afterwards.
    NotForwarded(usize),
}

/// Random faults for the requests no rule matches: each one, with probability
/// `percent`/100, gets a 503 SlowDown, a 500, a dropped connection or a lost answer.
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    pub seed: u64,
    pub percent: u64,
}

/// The faults chaos injected so far, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ChaosCounts {
    pub slow_down: usize,
    pub internal_error: usize,
    pub dropped: usize,
    pub lost_answer: usize,
}

/// xorshift64*: plenty for picking faults, and no crate for five lines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Requests with this method whose request target contains `query` (e.g. `"partNumber="`).
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    pub query: &'static str,
    pub fault: Fault,
}

impl Rule {
    pub fn new(method: &'static str, query: &'static str, fault: Fault) -> Rule {
        Rule {
            method,
            query,
            fault,
        }
    }

    fn matches(&self, method: &str, target: &str) -> bool {
        method == self.method
            && target
                .split_once('?')
                .is_some_and(|(_, q)| q.contains(self.query))
    }
}

struct State {
    upstream: String,
    /// Every request seen, raw as framed (for the AWS contract checker).
    recorded: std::sync::Mutex<Vec<Vec<u8>>>,
    rules: Vec<Rule>,
    /// Requests each rule matched, faulted or not.
    hits: Vec<AtomicUsize>,
    stop: AtomicBool,
    chaos: Option<(Chaos, Mutex<(Rng, ChaosCounts)>)>,
}

/// The running proxy; stops accepting on drop.
pub struct FaultProxy {
    pub port: u16,
    state: Arc<State>,
}

const IO_TIMEOUT: Duration = Duration::from_secs(30);

impl FaultProxy {
    /// Starts a proxy forwarding to `upstream` (`http://host:port`).
    pub fn start(upstream: &str, rules: Vec<Rule>) -> FaultProxy {
        Self::start_with(upstream, rules, None)
    }

    /// [`FaultProxy::start`], plus random faults for the requests no rule matches.
    pub fn start_chaos(upstream: &str, rules: Vec<Rule>, chaos: Chaos) -> FaultProxy {
        Self::start_with(upstream, rules, Some(chaos))
    }

    /// What chaos injected so far.
    pub fn chaos_counts(&self) -> ChaosCounts {
        self.state
            .chaos
            .as_ref()
            .map(|(_, m)| m.lock().unwrap().1)
            .unwrap_or_default()
    }

    fn start_with(upstream: &str, rules: Vec<Rule>, chaos: Option<Chaos>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream: upstream.trim_start_matches("http://").to_string(),
            recorded: Default::default(),
            hits: rules.iter().map(|_| AtomicUsize::new(0)).collect(),
            rules,
            stop: AtomicBool::new(false),
            chaos: chaos.map(|c| (c, Mutex::new((Rng(c.seed | 1), ChaosCounts::default())))),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(&st, conn);
                });
            }
        });
        FaultProxy { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far, raw (head and body as framed on the wire).
    pub fn recorded(&self) -> Vec<Vec<u8>> {
        self.state.recorded.lock().unwrap().clone()
    }

    /// How many requests rule `i` matched so far.
    pub fn hits(&self, i: usize) -> usize {
        self.state.hits[i].load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One HTTP message as raw bytes (head + body exactly as framed), plus what routing needs.
struct Message {
    raw: Vec<u8>,
    start_line: String,
    close: bool,
}

/// Serves one keep-alive client connection until it closes or a fault drops it.
fn serve(st: &State, client: TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        if st.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(req) = read_message(&mut reader, false)? else {
            return Ok(());
        };
        st.recorded.lock().unwrap().push(req.raw.clone());
        let mut it = req.start_line.split_whitespace();
        let (method, target) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        let rule = st.rules.iter().position(|r| r.matches(method, target));
        let fault = rule
            .map(|i| (st.rules[i].fault, st.hits[i].fetch_add(1, Ordering::SeqCst)))
            .or_else(|| random_fault(st).map(|f| (f, 0)));
        match fault {
            Some((Fault::SlowDown(n), seen)) if seen < n => error_response(
                &mut client,
                "503 Slow Down",
                "SlowDown",
                "Please reduce your request rate.",
            )?,
            Some((Fault::InternalError, _)) => error_response(
                &mut client,
                "500 Internal Server Error",
                "InternalError",
                "We encountered an internal error. Please try again.",
            )?,
            Some((Fault::Drop, _)) => {
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some((Fault::DropResponse(n), seen)) if seen < n => {
                let _ = fetch(st, &req, method == "HEAD");
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some((Fault::NotForwarded(n), seen)) if seen < n => {
                write!(
                    client,
                    "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
                )?;
                client.flush()?
            }
            Some((Fault::Delay { first, by }, seen)) if seen < first => {
                std::thread::sleep(by);
                forward(st, &req, method == "HEAD", &mut client)?
            }
            Some((Fault::DelayAnswer { first, by }, seen)) if seen < first => {
                let resp = fetch(st, &req, method == "HEAD")?;
                std::thread::sleep(by);
                client.write_all(&resp.raw)?;
                client.flush()?
            }
            Some((Fault::Throttle { bytes_per_sec }, _)) => {
                let resp = fetch(st, &req, method == "HEAD")?;
                for piece in resp.raw.chunks(64 << 10) {
                    client.write_all(piece)?;
                    client.flush()?;
                    std::thread::sleep(Duration::from_secs_f64(
                        piece.len() as f64 / bytes_per_sec as f64,
                    ));
                }
            }
            _ => forward(st, &req, method == "HEAD", &mut client)?,
        }
        if req.close {
            return Ok(());
        }
    }
}

fn error_response(client: &mut TcpStream, status: &str, code: &str, msg: &str) -> io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{msg}</Message></Error>"
    );
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    client.flush()
}

/// With chaos on, maybe one of its faults (counted).
fn random_fault(st: &State) -> Option<Fault> {
    let (chaos, m) = st.chaos.as_ref()?;
    let mut g = m.lock().unwrap();
    let (rng, counts) = &mut *g;
    if rng.next() % 100 >= chaos.percent {
        return None;
    }
    Some(match rng.next() % 4 {
        0 => {
            counts.slow_down += 1;
            Fault::SlowDown(1)
        }
        1 => {
            counts.internal_error += 1;
            Fault::InternalError
        }
        2 => {
            counts.dropped += 1;
            Fault::Drop
        }
        _ => {
            counts.lost_answer += 1;
            Fault::DropResponse(1)
        }
    })
}

/// Sends the request to moto on a fresh connection and relays its response.
fn forward(st: &State, req: &Message, head: bool, client: &mut TcpStream) -> io::Result<()> {
    let resp = fetch(st, req, head)?;
    client.write_all(&resp.raw)?;
    client.flush()
}

/// Sends the request to moto on a fresh connection and reads its response.
fn fetch(st: &State, req: &Message, head: bool) -> io::Result<Message> {
    let mut up = TcpStream::connect(&st.upstream)?;
    up.set_read_timeout(Some(IO_TIMEOUT))?;
    up.write_all(&req.raw)?;
    let mut reader = BufReader::new(up);
    read_message(&mut reader, head)?
        .ok_or_else(|| io::Error::other("upstream closed without a response"))
}

/// Reads one message: the head, then a body framed by Content-Length or chunked encoding (for
/// a response without either, until EOF). `None` on a clean EOF before any byte.
fn read_message(r: &mut impl BufRead, head_only: bool) -> io::Result<Option<Message>> {
    let mut raw = Vec::new();
    let mut start_line = String::new();
    let (mut len, mut chunked, mut close) = (None, false, false);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        raw.extend_from_slice(line.as_bytes());
        let trimmed = line.trim_end();
        if start_line.is_empty() {
            start_line = trimmed.to_string();
            continue;
        }
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').unwrap_or((trimmed, ""));
        let (name, value) = (
            name.trim().to_ascii_lowercase(),
            value.trim().to_ascii_lowercase(),
        );
        match name.as_str() {
            "content-length" => len = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => close = value == "close",
            _ => {}
        }
    }
    let is_response = start_line.starts_with("HTTP/");
    let no_body = head_only
        || (is_response && (start_line.contains(" 204 ") || start_line.contains(" 304 ")));
    if no_body {
    } else if chunked {
        read_chunked(r, &mut raw)?;
    } else if let Some(n) = len {
        let start = raw.len();
        raw.resize(start + n, 0);
        r.read_exact(&mut raw[start..])?;
    } else if is_response {
        r.read_to_end(&mut raw)?;
        close = true;
    }
    Ok(Some(Message {
        raw,
        start_line,
        close,
    }))
}

/// Copies a chunked body (chunks, last chunk, trailers) verbatim.
fn read_chunked(r: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        raw.extend_from_slice(line.as_bytes());
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            break;
        }
        let start = raw.len();
        raw.resize(start + size + 2, 0);
        r.read_exact(&mut raw[start..])?;
    }
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        raw.extend_from_slice(line.as_bytes());
        if line.trim().is_empty() {
            return Ok(());
        }
    }
}
