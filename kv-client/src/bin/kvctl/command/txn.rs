//! `kvctl txn`: etcdctl's transaction syntax, read from stdin:
//!
//! ```text
//! mod("config/a") > "0"          <- compares, one per line, then an empty line
//! value("config/b") = "on"
//!
//! put config/a "new value"       <- requests if every compare holds, then an empty line
//! get config/b
//!
//! del config/a                   <- requests otherwise, until the end of input
//! ```
//!
//! Compares: `value|version|create|mod|lease("key") =|!=|<|> "arg"`. Requests: `put key value`,
//! `get key [range_end] [--prefix]`, `del key [range_end] [--prefix]`; quote arguments that
//! contain spaces. When stdin is a terminal, each section is prompted for.

use std::io::{BufRead, IsTerminal, Write};

use kv_client::kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_client::kv_api::etcdserverpb::request_op::Request;
use kv_client::kv_api::etcdserverpb::{Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use kv_client::Client;

use super::key_range;
use crate::printer;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ask for each section even when stdin is not a terminal.
    #[arg(short, long)]
    pub interactive: bool,
}

pub async fn run(client: &Client, a: Args, out: printer::Format) -> anyhow::Result<()> {
    let prompt = a.interactive || std::io::stdin().is_terminal();
    let mut lines = std::io::stdin().lock().lines();
    let mut section = |title: &str, until_blank: bool| -> anyhow::Result<Vec<String>> {
        if prompt {
            println!("{title}");
            std::io::stdout().flush()?;
        }
        let mut got = Vec::new();
        for line in lines.by_ref() {
            let line = line?;
            if line.trim().is_empty() && until_blank {
                break;
            }
            if !line.trim().is_empty() {
                got.push(line);
            }
        }
        Ok(got)
    };
    let compares = section("compares:", true)?;
    let success = section("success requests (get, put, del):", true)?;
    let failure = section("failure requests (get, put, del):", false)?;
    let txn = TxnRequest {
        compare: compares.iter().map(|l| parse_compare(l)).collect::<anyhow::Result<_>>()?,
        success: success.iter().map(|l| parse_request(l)).collect::<anyhow::Result<_>>()?,
        failure: failure.iter().map(|l| parse_request(l)).collect::<anyhow::Result<_>>()?,
    };
    let resp = client.txn(txn).await?;
    printer::txn(out, &resp);
    Ok(())
}

/// Splits a line into words; double quotes group words, `\"` and `\\` escape.
fn words(line: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if quoted => cur.push(chars.next().ok_or_else(|| anyhow::anyhow!("dangling \\ in {line:?}"))?),
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    anyhow::ensure!(!quoted, "unterminated quote in {line:?}");
    if any || !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// `target("key") op "arg"`.
fn parse_compare(line: &str) -> anyhow::Result<Compare> {
    let bad = || anyhow::anyhow!("bad compare {line:?}: want e.g. value(\"key\") = \"v\" or mod(\"key\") > \"3\"");
    let open = line.find('(').ok_or_else(bad)?;
    let close = line.rfind(')').ok_or_else(bad)?;
    let target = line[..open].trim();
    let key = words(&line[open + 1..close])?.pop().ok_or_else(bad)?;
    let rest = words(&line[close + 1..])?;
    let [op, arg] = rest.as_slice() else { return Err(bad()) };
    let result = match op.as_str() {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        _ => return Err(bad()),
    };
    let num = || arg.parse::<i64>().map_err(|_| anyhow::anyhow!("bad compare {line:?}: {arg:?} is not a number"));
    let (target, union) = match target {
        "value" | "val" => (CompareTarget::Value, TargetUnion::Value(arg.clone().into_bytes())),
        "version" | "ver" => (CompareTarget::Version, TargetUnion::Version(num()?)),
        "create" | "c" => (CompareTarget::Create, TargetUnion::CreateRevision(num()?)),
        "mod" | "m" => (CompareTarget::Mod, TargetUnion::ModRevision(num()?)),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(num()?)),
        _ => return Err(bad()),
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key: key.into_bytes(),
        target_union: Some(union),
        ..Default::default()
    })
}

/// `put key value` | `get key [end] [--prefix|--from-key]` | `del key [end] [--prefix|--from-key]`.
fn parse_request(line: &str) -> anyhow::Result<RequestOp> {
    let w = words(line)?;
    let flags: Vec<&str> = w.iter().map(String::as_str).filter(|a| a.starts_with("--")).collect();
    let args: Vec<&str> = w.iter().map(String::as_str).filter(|a| !a.starts_with("--")).collect();
    let (prefix, from_key) = (flags.contains(&"--prefix"), flags.contains(&"--from-key"));
    if let Some(f) = flags.iter().find(|f| !matches!(**f, "--prefix" | "--from-key")) {
        anyhow::bail!("bad request {line:?}: unknown flag {f}");
    }
    let request = match args.as_slice() {
        ["put", key, value] if flags.is_empty() => Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        ["get", key, rest @ ..] if rest.len() <= 1 => {
            let (key, range_end) = key_range(key, rest.first().copied(), prefix, from_key)?;
            Request::RequestRange(RangeRequest { key, range_end, ..Default::default() })
        }
        ["del", key, rest @ ..] if rest.len() <= 1 => {
            let (key, range_end) = key_range(key, rest.first().copied(), prefix, from_key)?;
            Request::RequestDeleteRange(DeleteRangeRequest { key, range_end, prev_kv: false })
        }
        _ => anyhow::bail!("bad request {line:?}: want put <key> <value>, get <key> [end], or del <key> [end]"),
    };
    Ok(RequestOp { request: Some(request) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_honour_quotes_and_escapes() {
        assert_eq!(words(r#"put k "a b \"c\"""#).unwrap(), ["put", "k", r#"a b "c""#]);
        assert_eq!(words(r#"put k """#).unwrap(), ["put", "k", ""]);
        assert!(words(r#"put k "open"#).is_err());
    }

    #[test]
    fn compares_parse_like_etcdctl() {
        let c = parse_compare(r#"mod("key1") > "0""#).unwrap();
        assert_eq!(
            (c.target, c.result, c.key.as_slice()),
            (CompareTarget::Mod as i32, CompareResult::Greater as i32, &b"key1"[..])
        );
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(0)));
        let c = parse_compare(r#"value("a b") != "x y""#).unwrap();
        assert_eq!(c.target_union, Some(TargetUnion::Value(b"x y".to_vec())));
        assert!(parse_compare(r#"version("k") = "many""#).is_err());
        assert!(parse_compare(r#"colour("k") = "1""#).is_err());
        assert!(parse_compare("nonsense").is_err());
    }

    #[test]
    fn requests_parse_like_etcdctl() {
        assert!(matches!(parse_request("put k v").unwrap().request, Some(Request::RequestPut(_))));
        match parse_request("get a/ --prefix").unwrap().request {
            Some(Request::RequestRange(r)) => assert_eq!(r.range_end, b"a0"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_request("del a c").unwrap().request, Some(Request::RequestDeleteRange(_))));
        assert!(parse_request("put k").is_err());
        assert!(parse_request("get k --bogus").is_err());
        assert!(parse_request("watch k").is_err());
    }
}
