//! `endpoints.file`: a YAML or JSON file listing endpoints, polled for changes.
//! The autoscaler's local mode writes it.
//!
//! Accepted forms: a list (`["127.0.0.1:9001", {address: ..., weight: 50, draining: true}]`)
//! or an object with an `endpoints` list. `starting: true` lists a pod that
//! is not ready yet: it takes no traffic, and new sessions may wait for it
//! (`stickySessions.sessionPlacement`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{SourceKind, Update, UpdateSender};
use crate::config::{DEFAULT_WEIGHT, EndpointSpec};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileForm {
    List(Vec<FileEndpoint>),
    Object(FileObject),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileObject {
    endpoints: Vec<FileEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileEndpoint {
    Address(String),
    Detailed(Detailed),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Detailed {
    address: String,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    draining: bool,
    #[serde(default)]
    starting: bool,
}

/// Parses an endpoints file.
pub fn parse(text: &str) -> Result<Vec<EndpointSpec>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let form: FileForm = serde_saphyr::from_str(text).map_err(|e| {
        format!(
            "{}; write a list of `host:port` strings or {{address, weight, draining, starting}} objects",
            e.to_string().lines().next().unwrap_or_default()
        )
    })?;
    let list = match form {
        FileForm::List(l) => l,
        FileForm::Object(o) => o.endpoints,
    };
    let mut out: Vec<EndpointSpec> = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let (address, weight, draining, starting) = match item {
            FileEndpoint::Address(a) => (a, DEFAULT_WEIGHT, false, false),
            FileEndpoint::Detailed(d) => (
                d.address,
                d.weight.unwrap_or(DEFAULT_WEIGHT),
                d.draining,
                d.starting,
            ),
        };
        if draining && starting {
            return Err(format!(
                "endpoint {i} (`{address}`): it cannot be both `draining` and `starting`; keep one"
            ));
        }
        crate::config::check_host_port(&address).map_err(|e| format!("endpoint {i}: {e}"))?;
        if !(1..=1000).contains(&weight) {
            return Err(format!(
                "endpoint {i} (`{address}`): weight {weight} is out of range 1 to 1000"
            ));
        }
        if out.iter().any(|o| o.address == address) {
            return Err(format!("endpoint {i}: `{address}` is listed twice"));
        }
        out.push(EndpointSpec {
            address,
            weight,
            draining,
            starting,
        });
    }
    Ok(out)
}

/// Reads and parses the file.
pub fn read(path: &Path) -> Result<Vec<EndpointSpec>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("`{}`: {e}", path.display()))
}

/// Polls `path` every `interval` and sends its list whenever the content
/// changes. A missing or invalid file is logged and the last good list stays.
pub async fn run(pool: String, path: PathBuf, interval: Duration, updates: UpdateSender) {
    let mut last: Option<Vec<u8>> = None;
    loop {
        match std::fs::read(&path) {
            Ok(bytes) if last.as_ref() != Some(&bytes) => {
                match parse(&String::from_utf8_lossy(&bytes)) {
                    Ok(endpoints) => {
                        tracing::info!(%pool, file = %path.display(), endpoints = endpoints.len(), "endpoints file read");
                        if updates
                            .send(Update {
                                pool: pool.clone(),
                                source: SourceKind::File,
                                endpoints,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(%pool, file = %path.display(), error = %e, "endpoints file rejected; keeping the last good list")
                    }
                }
                last = Some(bytes);
            }
            Ok(_) => {}
            Err(e) => {
                if last.is_some() {
                    tracing::warn!(%pool, file = %path.display(), error = %e, "cannot read the endpoints file; keeping the last good list");
                    last = None;
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let list =
            parse("- 127.0.0.1:9001\n- address: 127.0.0.1:9002\n  weight: 50\n  draining: true\n")
                .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[1],
            EndpointSpec {
                address: "127.0.0.1:9002".into(),
                weight: 50,
                draining: true,
                starting: false,
            }
        );
        let starting = parse(r#"[{"address": "10.0.0.3:80", "starting": true}]"#).unwrap();
        assert!(starting[0].starting && !starting[0].draining);
        let json = parse(r#"{"endpoints": ["10.0.0.1:80", {"address": "10.0.0.2:80"}]}"#).unwrap();
        assert_eq!(json.len(), 2);
        assert_eq!(json[1].weight, DEFAULT_WEIGHT);
        assert!(parse("").unwrap().is_empty());
        assert!(parse("[]").unwrap().is_empty());
    }

    #[test]
    fn rejections() {
        assert!(
            parse("- {address: 'a:1', draining: true, starting: true}")
                .unwrap_err()
                .contains("both `draining` and `starting`")
        );
        assert!(parse("- nonsense").unwrap_err().contains("endpoint 0"));
        assert!(
            parse("- {address: 'a:1', weight: 0}")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse("- a:1\n- a:1\n").unwrap_err().contains("twice"));
        assert!(parse("- {address: 'a:1', colour: red}").is_err());
        assert!(parse("just text").is_err());
    }
}
