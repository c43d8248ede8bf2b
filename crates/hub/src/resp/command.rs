//! The commands of the RESP endpoint: each is applied to the store under its lock, and
//! its reply written in the connection's protocol version.
//!
//! What the store cannot do is refused with an error, never answered wrongly: data
//! types other than strings are unknown commands; databases other than 0, glob
//! character classes (`[...]`) and escapes (`\`), keys that are empty or not UTF-8, and
//! configuration changes are errors.

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::proto::{Encoder, Version};
use super::value::{append_from_resp, as_int, from_resp, from_resp_into, to_resp};
use super::{Client, Endpoint};
use crate::router::ConnId;
use crate::store::{Answer, Deliver, Store};
use yukicomm_wire::store::Op;
use yukicomm_wire::ErrorCode;

/// A connection's state that only its reader touches.
pub(crate) struct Session {
    pub(crate) conn: ConnId,
    pub(crate) authed: bool,
    /// Subscriptions by channel, and by pattern, with their numbers.
    pub(crate) channels: FxHashMap<Bytes, u32>,
    pub(crate) patterns: FxHashMap<Bytes, u32>,
    pub(crate) next_sub: u32,
    /// Set by `QUIT`: close once the reply is written.
    pub(crate) quit: bool,
    /// A buffer for values being converted, kept from one command to the next.
    pub(crate) scratch: Vec<u8>,
}

impl Session {
    pub(crate) fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }
}

/// Arity (Redis's convention: `n` exactly, `-n` at least) and flags of each command.
pub(crate) const COMMANDS: &[(&str, i32, &[&str])] = &[
    ("append", 3, &["write"]),
    (
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast", "no_auth"],
    ),
    ("client", -2, &[]),
    ("command", -1, &["loading", "stale"]),
    ("config", -2, &[]),
    ("dbsize", 1, &["readonly", "fast"]),
    ("decr", 2, &["write", "denyoom", "fast"]),
    ("decrby", 3, &["write", "denyoom", "fast"]),
    ("del", -2, &["write"]),
    ("echo", 2, &["fast"]),
    ("exists", -2, &["readonly", "fast"]),
    ("expire", -3, &["write", "fast"]),
    ("expireat", -3, &["write", "fast"]),
    ("flushall", -1, &["write"]),
    ("flushdb", -1, &["write"]),
    ("get", 2, &["readonly", "fast"]),
    ("getdel", 2, &["write", "fast"]),
    ("getset", 3, &["write", "denyoom", "fast"]),
    (
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
    ),
    ("incr", 2, &["write", "denyoom", "fast"]),
    ("incrby", 3, &["write", "denyoom", "fast"]),
    ("info", -1, &["loading", "stale"]),
    ("keys", 2, &["readonly"]),
    ("mget", -2, &["readonly", "fast"]),
    ("mset", -3, &["write", "denyoom"]),
    ("msetnx", -3, &["write", "denyoom"]),
    ("persist", 2, &["write", "fast"]),
    ("pexpire", -3, &["write", "fast"]),
    ("pexpireat", -3, &["write", "fast"]),
    ("ping", -1, &["fast"]),
    ("psetex", 4, &["write", "denyoom"]),
    (
        "psubscribe",
        -2,
        &["pubsub", "noscript", "loading", "stale"],
    ),
    ("pttl", 2, &["readonly", "fast"]),
    ("publish", 3, &["pubsub", "loading", "stale", "fast"]),
    ("pubsub", -2, &[]),
    (
        "punsubscribe",
        -1,
        &["pubsub", "noscript", "loading", "stale"],
    ),
    (
        "quit",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
    ),
    (
        "reset",
        1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
    ),
    ("scan", -2, &["readonly"]),
    ("select", 2, &["loading", "stale", "fast"]),
    ("set", -3, &["write", "denyoom"]),
    ("setex", 4, &["write", "denyoom"]),
    ("setnx", 3, &["write", "denyoom", "fast"]),
    ("strlen", 2, &["readonly", "fast"]),
    ("subscribe", -2, &["pubsub", "noscript", "loading", "stale"]),
    ("ttl", 2, &["readonly", "fast"]),
    ("type", 2, &["readonly", "fast"]),
    ("unlink", -2, &["write", "fast"]),
    (
        "unsubscribe",
        -1,
        &["pubsub", "noscript", "loading", "stale"],
    ),
];

/// The key positions of a command, for `COMMAND INFO`: first, last, step.
fn key_spec(name: &str) -> (i64, i64, i64) {
    match name {
        "del" | "exists" | "mget" | "unlink" => (1, -1, 1),
        "mset" | "msetnx" => (1, -1, 2),
        "append" | "decr" | "decrby" | "expire" | "expireat" | "get" | "getdel" | "getset"
        | "incr" | "incrby" | "persist" | "pexpire" | "pexpireat" | "psetex" | "pttl" | "set"
        | "setex" | "setnx" | "strlen" | "ttl" | "type" => (1, 1, 1),
        _ => (0, 0, 0),
    }
}

/// Redis's message for a store error.
fn store_error(a: Answer<'_>) -> String {
    match a {
        Answer::Error(ErrorCode::NotAnInteger, _) => {
            "ERR value is not an integer or out of range".into()
        }
        Answer::Error(ErrorCode::Overflow, _) => "ERR increment or decrement would overflow".into(),
        Answer::Error(_, m) => format!("ERR {m}"),
        _ => "ERR unexpected reply from the store".into(),
    }
}

const NOT_INT: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

fn int_arg(b: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| NOT_INT.to_string())
}

/// Refuses glob syntax the store does not have, rather than matching differently.
fn check_pattern(p: &[u8]) -> Result<(), String> {
    if p.iter().any(|&c| c == b'[' || c == b'\\') {
        return Err(
            "ERR patterns with character classes ('[') or escapes ('\\') are not supported; use '*' and '?'"
                .into(),
        );
    }
    Ok(())
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// What a command asks of the connection besides its reply.
pub(crate) struct Ctx<'a> {
    pub(crate) endpoint: &'a Endpoint,
    pub(crate) client: &'a Client,
    pub(crate) version: Version,
}

/// Runs one command; its reply goes to `reply`. `store` and `out` are the store under
/// its lock.
pub(crate) fn exec(
    s: &mut Session,
    cx: &mut Ctx<'_>,
    args: &[Bytes],
    store: &mut Store,
    out: &mut dyn Deliver,
    reply: &mut Vec<u8>,
) {
    // The name in lower case, without allocating: no command is longer than 16 bytes.
    let mut lower = [0u8; 16];
    let found = (args[0].len() <= lower.len())
        .then(|| {
            let l = &mut lower[..args[0].len()];
            l.copy_from_slice(&args[0]);
            l.make_ascii_lowercase();
            std::str::from_utf8(l).ok()
        })
        .flatten()
        .and_then(|n| {
            COMMANDS
                .binary_search_by(|c| c.0.cmp(n))
                .ok()
                .map(|i| COMMANDS[i])
        });
    let version = cx.version;
    let mut e = Encoder {
        out: reply,
        version,
    };
    let Some((name, arity, _)) = found else {
        let mut m = format!(
            "ERR unknown command '{}', with args beginning with: ",
            truncate(&args[0])
        );
        for a in args.iter().skip(1).take(20) {
            m.push_str(&format!("'{}' ", truncate(a)));
        }
        e.error(&m);
        return;
    };
    let n = args.len() as i32;
    if (arity > 0 && n != arity) || (arity < 0 && n < -arity) {
        e.error(&format!(
            "ERR wrong number of arguments for '{name}' command"
        ));
        return;
    }
    if !s.authed && !matches!(name, "auth" | "hello" | "quit" | "reset") {
        e.error("NOAUTH Authentication required.");
        return;
    }
    if version == Version::Resp2
        && s.subscriptions() > 0
        && !matches!(
            name,
            "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" | "ping" | "quit" | "reset"
        )
    {
        e.error(&format!("ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"));
        return;
    }
    store.count_op();
    if let Err(m) = run(name, s, cx, args, store, out, &mut e) {
        e.error(&m);
    }
    if s.scratch.capacity() > 64 << 10 {
        s.scratch = Vec::new();
    }
}

fn truncate(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(128)]);
    s.replace(['\r', '\n'], " ")
}

type R = Result<(), String>;

fn run(
    name: &str,
    s: &mut Session,
    cx: &mut Ctx<'_>,
    a: &[Bytes],
    store: &mut Store,
    out: &mut dyn Deliver,
    e: &mut Encoder<'_>,
) -> R {
    let se = store_error;
    match name {
        "ping" => {
            if e.version == Version::Resp2 && s.subscriptions() > 0 {
                e.array(2);
                e.bulk(b"pong");
                e.bulk(a.get(1).map_or(&b""[..], |m| m));
            } else if let Some(m) = a.get(1) {
                if a.len() > 2 {
                    return Err("ERR wrong number of arguments for 'ping' command".into());
                }
                e.bulk(m);
            } else {
                e.simple("PONG");
            }
        }
        "echo" => e.bulk(&a[1]),
        "quit" => {
            s.quit = true;
            e.simple("OK");
        }
        "select" => {
            if int_arg(&a[1])? != 0 {
                return Err("ERR DB index is out of range".into());
            }
            e.simple("OK");
        }
        "auth" => {
            let (user, pass) = match a.len() {
                2 => (&b"default"[..], &a[1]),
                3 => (&a[1][..], &a[2]),
                _ => return Err(SYNTAX.into()),
            };
            auth(s, cx, user, pass)?;
            e.simple("OK");
        }
        "hello" => hello(s, cx, a, store, e)?,
        "reset" => {
            reset(s, cx, store);
            e.version = Version::Resp2;
            e.simple("RESET");
        }
        "client" => client(s, cx, a, e)?,
        "command" => command(a, e)?,
        "info" => info(cx, a, store, e),
        "config" => config(cx, a, e)?,
        // Strings.
        "get" => match store.entry(&a[1], out).map_err(se)? {
            Some((v, _)) => e.bulk(&to_resp(v)),
            None => e.null(),
        },
        "set" => set(s, a, store, out, e)?,
        "setnx" => {
            let set = store.apply(
                s.conn,
                Op::Set {
                    key: a[1].clone(),
                    value: from_resp(&a[2]).into(),
                    ttl_ms: None,
                    if_absent: true,
                },
                out,
            );
            match set {
                Answer::Bool(b) => e.int(b.into()),
                other => return Err(se(other)),
            }
        }
        "setex" | "psetex" => {
            let n = int_arg(&a[2])?;
            let ms = if name == "setex" {
                n.checked_mul(1000)
            } else {
                Some(n)
            };
            let at = ms
                .filter(|&ms| ms > 0)
                .and_then(|ms| (store.now_ms() as i64).checked_add(ms))
                .ok_or_else(|| format!("ERR invalid expire time in '{name}' command"))?;
            store
                .set_at(&a[1], &from_resp(&a[3]), Some(at as u64), out)
                .map_err(se)?;
            e.simple("OK");
        }
        "getset" | "getdel" => {
            let old = store
                .entry(&a[1], out)
                .map_err(se)?
                .map(|(v, _)| to_resp(v).into_owned());
            if name == "getset" {
                store
                    .set_at(&a[1], &from_resp(&a[2]), None, out)
                    .map_err(se)?;
            } else if old.is_some() {
                store.remove(&a[1], out).map_err(se)?;
            }
            match old {
                Some(v) => e.bulk(&v),
                None => e.null(),
            }
        }
        "mget" => {
            e.array(a.len() - 1);
            for k in &a[1..] {
                // A key the store cannot hold has no value.
                match store.entry(k, out) {
                    Ok(Some((v, _))) => e.bulk(&to_resp(v)),
                    _ => e.null(),
                }
            }
        }
        "mset" | "msetnx" => {
            if a.len().is_multiple_of(2) {
                return Err(format!(
                    "ERR wrong number of arguments for '{name}' command"
                ));
            }
            // Every value, converted, one after the other in one buffer.
            let values = &mut s.scratch;
            values.clear();
            let mut ends = Vec::with_capacity(a.len() / 2);
            for p in a[1..].chunks(2) {
                append_from_resp(values, &p[1]);
                ends.push(values.len());
            }
            let pairs = || {
                a[1..].chunks(2).zip(&ends).scan(0, |start, (p, &end)| {
                    let v = &values[*start..end];
                    *start = end;
                    Some((&p[0], v))
                })
            };
            for (k, v) in pairs() {
                store.check_write(k, v).map_err(se)?;
            }
            if name == "msetnx" {
                for (k, _) in pairs() {
                    if store.entry(k, out).map_err(se)?.is_some() {
                        e.int(0);
                        return Ok(());
                    }
                }
            }
            for (k, v) in pairs() {
                store.set_at(k, v, None, out).map_err(se)?;
            }
            if name == "msetnx" {
                e.int(1);
            } else {
                e.simple("OK");
            }
        }
        "incr" | "decr" | "incrby" | "decrby" => {
            let by = match name {
                "incr" => 1,
                "decr" => -1,
                "incrby" => int_arg(&a[2])?,
                _ => int_arg(&a[2])?
                    .checked_neg()
                    .ok_or("ERR decrement would overflow")?,
            };
            let (current, at) = match store.entry(&a[1], out).map_err(se)? {
                None => (0, None),
                Some((v, at)) => (as_int(v).ok_or(NOT_INT)?, at),
            };
            let next = current
                .checked_add(by)
                .ok_or("ERR increment or decrement would overflow")?;
            let v = &mut s.scratch;
            v.clear();
            super::value::write_int(v, next);
            store.set_at(&a[1], v, at, out).map_err(se)?;
            e.int(next);
        }
        "append" => {
            let n = store
                .append(&a[1], &a[2], |v| to_resp(v).into_owned(), from_resp, out)
                .map_err(se)?;
            e.int(n as i64);
        }
        "strlen" => match store.entry(&a[1], out).map_err(se)? {
            Some((v, _)) => e.int(to_resp(v).len() as i64),
            None => e.int(0),
        },
        // Keys.
        "del" | "unlink" => {
            let mut n = 0;
            for k in &a[1..] {
                store.check_any_key(k).map_err(se)?;
            }
            for k in &a[1..] {
                n += i64::from(store.remove(k, out).map_err(se)?);
            }
            e.int(n);
        }
        "exists" => {
            let mut n = 0;
            for k in &a[1..] {
                n += i64::from(store.entry(k, out).map_err(se)?.is_some());
            }
            e.int(n);
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => expire(name, a, store, out, e)?,
        "ttl" | "pttl" => {
            let now = store.now_ms();
            match store.entry(&a[1], out).map_err(se)? {
                None => e.int(-2),
                Some((_, None)) => e.int(-1),
                Some((_, Some(at))) => {
                    let ms = at.saturating_sub(now).min(i64::MAX as u64) as i64;
                    e.int(if name == "ttl" { (ms + 500) / 1000 } else { ms })
                }
            }
        }
        "persist" => {
            let had = matches!(store.entry(&a[1], out).map_err(se)?, Some((_, Some(_))));
            if had {
                store.expire_at(&a[1], None, out).map_err(se)?;
            }
            e.int(had.into());
        }
        "type" => {
            let t = match store.entry(&a[1], out) {
                Ok(Some(_)) => "string",
                _ => "none",
            };
            e.simple(t);
        }
        "keys" => {
            check_pattern(&a[1])?;
            match store.apply(
                s.conn,
                Op::Keys {
                    pattern: a[1].clone(),
                },
                out,
            ) {
                Answer::Keys(keys) => {
                    e.array(keys.len());
                    for k in keys {
                        e.bulk(k.as_bytes());
                    }
                }
                other => return Err(se(other)),
            }
        }
        "scan" => {
            let cursor: u64 = std::str::from_utf8(&a[1])
                .ok()
                .and_then(|c| c.parse().ok())
                .ok_or("ERR invalid cursor")?;
            let mut pattern = None;
            let mut count = 10usize;
            let mut only_strings = true;
            let mut i = 2;
            while i < a.len() {
                let v = a.get(i + 1).ok_or(SYNTAX)?;
                if eq(&a[i], "match") {
                    check_pattern(v)?;
                    pattern = Some(&v[..]);
                } else if eq(&a[i], "count") {
                    let c = int_arg(v)?;
                    if c < 1 {
                        return Err(SYNTAX.into());
                    }
                    count = c.min(1 << 20) as usize;
                } else if eq(&a[i], "type") {
                    only_strings = eq(v, "string");
                } else {
                    return Err(SYNTAX.into());
                }
                i += 2;
            }
            let (next, keys) = if only_strings {
                store.scan(cursor, count, pattern)
            } else {
                (0, Vec::new())
            };
            e.array(2);
            e.bulk(next.to_string().as_bytes());
            e.array(keys.len());
            for k in keys {
                e.bulk(&k);
            }
        }
        "dbsize" => e.int(store.key_counts().0 as i64),
        "flushdb" | "flushall" => {
            if let Some(m) = a.get(1) {
                if a.len() > 2 || !(eq(m, "sync") || eq(m, "async")) {
                    return Err(SYNTAX.into());
                }
            }
            store.flush(out).map_err(se)?;
            e.simple("OK");
        }
        // Publish/subscribe.
        "publish" => match store.apply(
            s.conn,
            Op::Publish {
                topic: a[1].clone(),
                body: from_resp(&a[2]).into(),
            },
            out,
        ) {
            Answer::Int(n) => e.int(n),
            other => return Err(se(other)),
        },
        "subscribe" | "psubscribe" => {
            let pattern = name == "psubscribe";
            for ch in &a[1..] {
                if pattern {
                    check_pattern(ch)?;
                }
                let known = if pattern { &s.patterns } else { &s.channels };
                if !known.contains_key(ch) {
                    let sub = s.next_sub;
                    store
                        .subscribe_unmetered(s.conn, sub, ch, pattern)
                        .map_err(se)?;
                    s.next_sub = s.next_sub.wrapping_add(1);
                    cx.client.add_sub(sub, ch.clone(), pattern);
                    if pattern {
                        s.patterns.insert(ch.clone(), sub);
                    } else {
                        s.channels.insert(ch.clone(), sub);
                    }
                }
                e.push(3);
                e.bulk(name.as_bytes());
                e.bulk(ch);
                e.int(s.subscriptions() as i64);
            }
        }
        "unsubscribe" | "punsubscribe" => {
            let pattern = name == "punsubscribe";
            let names: Vec<Bytes> = if a.len() > 1 {
                a[1..].to_vec()
            } else {
                let mut v: Vec<Bytes> = if pattern { &s.patterns } else { &s.channels }
                    .keys()
                    .cloned()
                    .collect();
                v.sort_unstable();
                v
            };
            if names.is_empty() {
                e.push(3);
                e.bulk(name.as_bytes());
                e.null();
                e.int(s.subscriptions() as i64);
            }
            for ch in names {
                let map = if pattern {
                    &mut s.patterns
                } else {
                    &mut s.channels
                };
                if let Some(sub) = map.remove(&ch) {
                    store.unsubscribe(s.conn, sub);
                    cx.client.remove_sub(sub);
                }
                e.push(3);
                e.bulk(name.as_bytes());
                e.bulk(&ch);
                e.int(s.subscriptions() as i64);
            }
        }
        "pubsub" => {
            let sub = &a[1];
            if eq(sub, "channels") {
                if let Some(p) = a.get(2) {
                    check_pattern(p)?;
                }
                let chans = store.channels(a.get(2).map(|p| &p[..]));
                e.array(chans.len());
                for c in chans {
                    e.bulk(&c);
                }
            } else if eq(sub, "numsub") {
                // A flat array in RESP3 too, as Redis answers.
                e.array(2 * (a.len() - 2));
                for c in &a[2..] {
                    e.bulk(c);
                    e.int(store.numsub(c) as i64);
                }
            } else if eq(sub, "numpat") {
                e.int(store.numpat() as i64);
            } else {
                return Err(unknown_sub("PUBSUB", sub));
            }
        }
        _ => return Err(format!("ERR unknown command '{name}'")),
    }
    Ok(())
}

fn unknown_sub(cmd: &str, sub: &[u8]) -> String {
    format!(
        "ERR unknown subcommand '{}'. Try {cmd} HELP.",
        truncate(sub)
    )
}

fn auth(s: &mut Session, cx: &Ctx<'_>, user: &[u8], pass: &[u8]) -> R {
    let Some(expected) = &cx.endpoint.config.password else {
        return Err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into());
    };
    // Compared in constant time, the user name included.
    let same = user == b"default"
        && expected.len() == pass.len()
        && expected
            .as_bytes()
            .iter()
            .zip(pass)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0;
    if !same {
        tracing::warn!(client = cx.client.id, "a RESP client gave a wrong password");
        return Err("WRONGPASS invalid username-password pair or user is disabled.".into());
    }
    s.authed = true;
    Ok(())
}

fn hello(s: &mut Session, cx: &mut Ctx<'_>, a: &[Bytes], store: &Store, e: &mut Encoder<'_>) -> R {
    let mut version = e.version;
    let mut i = 1;
    if let Some(v) = a.get(1) {
        version = match int_arg(v) {
            Ok(2) => Version::Resp2,
            Ok(3) => Version::Resp3,
            Ok(_) => return Err("NOPROTO unsupported protocol version".into()),
            Err(_) => return Err("ERR Protocol version is not an integer or out of range".into()),
        };
        i = 2;
    }
    let mut setname = None;
    while i < a.len() {
        if eq(&a[i], "auth") && i + 2 < a.len() {
            auth(s, cx, &a[i + 1], &a[i + 2])?;
            i += 3;
        } else if eq(&a[i], "setname") && i + 1 < a.len() {
            setname = Some(a[i + 1].clone());
            i += 2;
        } else {
            return Err(format!(
                "ERR Syntax error in HELLO option '{}'",
                truncate(&a[i])
            ));
        }
    }
    if !s.authed {
        return Err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into());
    }
    if let Some(n) = setname {
        check_name(&n)?;
        cx.client.state.lock().name = Some(n);
    }
    cx.version = version;
    cx.client.state.lock().version = version;
    e.version = version;
    let _ = store;
    e.map(7);
    e.bulk(b"server");
    e.bulk(b"redis");
    e.bulk(b"version");
    e.bulk(super::REDIS_VERSION.as_bytes());
    e.bulk(b"proto");
    e.int(if version == Version::Resp3 { 3 } else { 2 });
    e.bulk(b"id");
    e.int(cx.client.id as i64);
    e.bulk(b"mode");
    e.bulk(b"standalone");
    e.bulk(b"role");
    e.bulk(b"master");
    e.bulk(b"modules");
    e.array(0);
    Ok(())
}

fn reset(s: &mut Session, cx: &mut Ctx<'_>, store: &mut Store) {
    for (_, sub) in s.channels.drain().chain(s.patterns.drain()) {
        store.unsubscribe(s.conn, sub);
        cx.client.remove_sub(sub);
    }
    s.authed = cx.endpoint.config.password.is_none();
    cx.version = Version::Resp2;
    let mut st = cx.client.state.lock();
    st.version = Version::Resp2;
    st.name = None;
}

fn check_name(n: &[u8]) -> R {
    if n.iter().any(|&c| c <= b' ' || c > b'~') {
        return Err(
            "ERR Client names cannot contain spaces, newlines or special characters.".into(),
        );
    }
    Ok(())
}

fn client(s: &mut Session, cx: &mut Ctx<'_>, a: &[Bytes], e: &mut Encoder<'_>) -> R {
    let sub = &a[1];
    let argc = |n: usize| -> R {
        if a.len() != n {
            return Err(format!(
                "ERR wrong number of arguments for 'client|{}' command",
                String::from_utf8_lossy(sub).to_ascii_lowercase()
            ));
        }
        Ok(())
    };
    if eq(sub, "setname") {
        argc(3)?;
        check_name(&a[2])?;
        cx.client.state.lock().name = (!a[2].is_empty()).then(|| a[2].clone());
        e.simple("OK");
    } else if eq(sub, "getname") {
        argc(2)?;
        match cx.client.state.lock().name.clone() {
            Some(n) => e.bulk(&n),
            None => e.null(),
        }
    } else if eq(sub, "setinfo") {
        argc(4)?;
        let mut st = cx.client.state.lock();
        if eq(&a[2], "lib-name") {
            check_name(&a[3])?;
            st.lib_name = Some(a[3].clone());
        } else if eq(&a[2], "lib-ver") {
            check_name(&a[3])?;
            st.lib_ver = Some(a[3].clone());
        } else {
            return Err(format!("ERR Unrecognized option '{}'", truncate(&a[2])));
        }
        e.simple("OK");
    } else if eq(sub, "id") {
        argc(2)?;
        e.int(cx.client.id as i64);
    } else if eq(sub, "list") || eq(sub, "info") {
        let _ = s;
        let text = if eq(sub, "info") {
            argc(2)?;
            let mut t = cx.client.describe();
            t.push('\n');
            t
        } else {
            cx.endpoint.client_list()
        };
        e.verbatim(text.as_bytes());
    } else {
        return Err(unknown_sub("CLIENT", sub));
    }
    Ok(())
}

fn command(a: &[Bytes], e: &mut Encoder<'_>) -> R {
    let info = |e: &mut Encoder<'_>, name: &str, arity: i32, flags: &[&str]| {
        let (first, last, step) = key_spec(name);
        e.array(10);
        e.bulk(name.as_bytes());
        e.int(arity.into());
        e.set(flags.len());
        for f in flags {
            e.simple(f);
        }
        e.int(first);
        e.int(last);
        e.int(step);
        e.set(0);
        e.set(0);
        e.array(0);
        e.array(0);
    };
    match a.get(1) {
        None => {
            e.array(COMMANDS.len());
            for &(n, arity, flags) in COMMANDS {
                info(e, n, arity, flags);
            }
        }
        Some(sub) if eq(sub, "count") => e.int(COMMANDS.len() as i64),
        Some(sub) if eq(sub, "info") => {
            e.array(a.len() - 2);
            for n in &a[2..] {
                let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                match COMMANDS.iter().find(|c| c.0 == n) {
                    Some(&(n, arity, flags)) => info(e, n, arity, flags),
                    None => e.null_array(),
                }
            }
        }
        // Documentation is not kept: an empty answer, which clients take as "no docs".
        Some(sub) if eq(sub, "docs") => e.map(0),
        Some(sub) => return Err(unknown_sub("COMMAND", sub)),
    }
    Ok(())
}

fn info(cx: &Ctx<'_>, a: &[Bytes], store: &Store, e: &mut Encoder<'_>) {
    use std::fmt::Write;
    let want = |s: &str| {
        a.len() < 2
            || a[1..]
                .iter()
                .any(|x| eq(x, s) || eq(x, "all") || eq(x, "everything") || eq(x, "default"))
    };
    let mut t = String::new();
    if want("server") {
        let _ = write!(
            t,
            "# Server\r\nredis_version:{}\r\nyukicomm_version:{}\r\nredis_mode:standalone\r\nos:{}\r\nprocess_id:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            super::REDIS_VERSION,
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            cx.endpoint.started.elapsed().as_secs()
        );
    }
    if want("clients") {
        let _ = write!(
            t,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
            cx.endpoint.clients.lock().len(),
            cx.endpoint.config.max_clients
        );
    }
    if want("keyspace") {
        let (keys, expires) = store.key_counts();
        t.push_str("# Keyspace\r\n");
        if keys > 0 {
            let _ = write!(t, "db0:keys={keys},expires={expires},avg_ttl=0\r\n");
        }
        t.push_str("\r\n");
    }
    e.verbatim(t.trim_end().as_bytes());
}

fn config(cx: &Ctx<'_>, a: &[Bytes], e: &mut Encoder<'_>) -> R {
    let sub = &a[1];
    if !eq(sub, "get") {
        if eq(sub, "set") || eq(sub, "resetstat") || eq(sub, "rewrite") {
            return Err(format!(
                "ERR CONFIG {} is not supported here: the endpoint is configured by the program (HubConfig::redis)",
                String::from_utf8_lossy(sub).to_ascii_uppercase()
            ));
        }
        return Err(unknown_sub("CONFIG", sub));
    }
    if a.len() < 3 {
        return Err("ERR wrong number of arguments for 'config|get' command".into());
    }
    let c = &cx.endpoint.config;
    let params: Vec<(&str, String)> = vec![
        ("appendonly", "no".into()),
        ("databases", "1".into()),
        ("maxclients", c.max_clients.to_string()),
        ("proto-max-bulk-len", c.limits.max_bulk.to_string()),
        (
            "protected-mode",
            if c.password.is_some() { "no" } else { "yes" }.into(),
        ),
        ("save", String::new()),
        (
            "client-output-buffer-limit",
            format!("pubsub {} {} 0", c.output_limit, c.output_limit),
        ),
    ];
    let mut found = Vec::new();
    for p in &a[2..] {
        let m = wildmatch::WildMatch::new(&String::from_utf8_lossy(p).to_ascii_lowercase());
        for (k, v) in &params {
            if m.matches(k) && !found.iter().any(|(f, _): &(&str, String)| f == k) {
                found.push((k, v.clone()));
            }
        }
    }
    e.map(found.len());
    for (k, v) in found {
        e.bulk(k.as_bytes());
        e.bulk(v.as_bytes());
    }
    Ok(())
}

fn set(
    s: &mut Session,
    a: &[Bytes],
    store: &mut Store,
    out: &mut dyn Deliver,
    e: &mut Encoder<'_>,
) -> R {
    let (mut nx, mut xx, mut get, mut keep) = (false, false, false, false);
    let mut at: Option<u64> = None;
    let mut expiry_given = false;
    let now = store.now_ms();
    let mut i = 3;
    while i < a.len() {
        let o = &a[i];
        if eq(o, "nx") && !xx {
            nx = true;
        } else if eq(o, "xx") && !nx {
            xx = true;
        } else if eq(o, "get") {
            get = true;
        } else if eq(o, "keepttl") && !expiry_given {
            keep = true;
        } else if !keep
            && !expiry_given
            && (eq(o, "ex") || eq(o, "px") || eq(o, "exat") || eq(o, "pxat"))
        {
            let n = int_arg(a.get(i + 1).ok_or(SYNTAX)?)?;
            let invalid = || "ERR invalid expire time in 'set' command".to_string();
            if n <= 0 {
                return Err(invalid());
            }
            let ms = if eq(o, "ex") || eq(o, "exat") {
                n.checked_mul(1000).ok_or_else(invalid)?
            } else {
                n
            };
            let t = if eq(o, "ex") || eq(o, "px") {
                (now as i64).checked_add(ms).ok_or_else(invalid)?
            } else {
                ms
            };
            at = Some(t as u64);
            expiry_given = true;
            i += 1;
        } else {
            return Err(SYNTAX.into());
        }
        i += 1;
    }
    let value = &mut s.scratch;
    from_resp_into(value, &a[2]);
    store.check_write(&a[1], value).map_err(store_error)?;
    // The old value is copied only for `GET`; otherwise only whether it exists and its
    // expiry matter.
    let (exists, old_at, old) = match store.entry(&a[1], out).map_err(store_error)? {
        Some((v, t)) => (true, t, get.then(|| to_resp(v).into_owned())),
        None => (false, None, None),
    };
    let go = !(nx && exists || xx && !exists);
    if go {
        if keep {
            at = old_at;
        }
        if at.is_some_and(|t| t <= now) {
            // A time already past: the key is written and gone at once, as in Redis.
            if exists {
                store.remove(&a[1], out).map_err(store_error)?;
            }
        } else {
            store.set_at(&a[1], value, at, out).map_err(store_error)?;
        }
    }
    match (get, old) {
        (true, Some(v)) => e.bulk(&v),
        (true, None) => e.null(),
        (false, _) if go => e.simple("OK"),
        (false, _) => e.null(),
    }
    Ok(())
}

fn expire(
    name: &str,
    a: &[Bytes],
    store: &mut Store,
    out: &mut dyn Deliver,
    e: &mut Encoder<'_>,
) -> R {
    let n = int_arg(&a[2])?;
    let now = store.now_ms() as i64;
    let invalid = || format!("ERR invalid expire time in '{name}' command");
    let at = match name {
        "expire" => n.checked_mul(1000).and_then(|ms| now.checked_add(ms)),
        "pexpire" => now.checked_add(n),
        "expireat" => n.checked_mul(1000),
        _ => Some(n),
    }
    .ok_or_else(invalid)?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &a[3..] {
        if eq(o, "nx") {
            nx = true;
        } else if eq(o, "xx") {
            xx = true;
        } else if eq(o, "gt") {
            gt = true;
        } else if eq(o, "lt") {
            lt = true;
        } else {
            return Err(format!("ERR Unsupported option {}", truncate(o)));
        }
    }
    if nx && (xx || gt || lt) {
        return Err("ERR NX and XX, GT or LT options at the same time are not compatible".into());
    }
    if gt && lt {
        return Err("ERR GT and LT options at the same time are not compatible".into());
    }
    let Some((_, current)) = store.entry(&a[1], out).map_err(store_error)? else {
        e.int(0);
        return Ok(());
    };
    // No expiry counts as an infinite one for GT and LT.
    let ok = match current {
        None => !xx && !gt,
        Some(t) => !nx && (!gt || at > t as i64) && (!lt || at < t as i64),
    };
    if ok {
        store
            .expire_at(&a[1], Some(at.max(0) as u64), out)
            .map_err(store_error)?;
    }
    e.int(ok.into());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::COMMANDS;

    #[test]
    fn commands_are_sorted_for_binary_search() {
        assert!(COMMANDS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(COMMANDS.iter().all(|c| c.0.len() <= 16));
    }
}
