//! A scripted fake Kubernetes API server: it serves one node and its pods, answers only the
//! reads a test allows, and takes only the writes the test expects, in order and byte-for-byte
//! (as JSON): a node merge patch, which it applies, or an eviction, which removes the pod or is
//! refused with a PodDisruptionBudget's 429. Any other request fails the test at [`FakeKube::finish`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A write the test expects next.
#[derive(Debug, Clone)]
pub enum Expect {
    /// `PATCH /api/v1/nodes/{node}` with this JSON merge patch; applied when `status` is 200.
    NodePatch { body: Value, status: u16 },
    /// `POST /api/v1/namespaces/{ns}/pods/{pod}/eviction`: 201 removes the pod, 429 is a PDB
    /// refusing it.
    Evict {
        namespace: String,
        pod: String,
        status: u16,
    },
}

#[derive(Debug, Default)]
struct State {
    node_name: String,
    node: Value,
    pods: Vec<Value>,
    reads: Vec<String>,
    expected: VecDeque<Expect>,
    failures: Vec<String>,
    seen: Vec<String>,
}

#[derive(Debug)]
pub struct FakeKube {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

/// The bearer token the kubeconfig carries and every request must show.
pub const TOKEN: &str = "pivot-test-token";

impl FakeKube {
    /// Serves `node` (its `metadata.name` is the node's name) and `pods`; `reads` are the
    /// `PATH?QUERY` GETs the test allows (any number of times each).
    pub async fn start(node: Value, pods: Vec<Value>, reads: &[&str]) -> Self {
        let state = Arc::new(Mutex::new(State {
            node_name: node["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            node,
            pods,
            reads: reads.iter().map(|r| (*r).to_owned()).collect(),
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = Arc::clone(&shared);
                async move { handle(&state, &method, &uri, &headers, &body) }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn expect(&self, e: Expect) {
        self.lock().expected.push_back(e);
    }

    /// The node as the fake holds it now.
    pub fn node(&self) -> Value {
        self.lock().node.clone()
    }

    pub fn pods(&self) -> Vec<Value> {
        self.lock().pods.clone()
    }

    /// Writes a kubeconfig for this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: pivot\n\
                 current-context: fake\nusers:\n- name: pivot\n  user:\n    token: {TOKEN}\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// Fails unless every expected write came and nothing unexpected did; returns the requests
    /// seen, as `METHOD PATH?QUERY`.
    pub fn finish(&self) -> Vec<String> {
        let s = self.lock();
        assert!(
            s.failures.is_empty(),
            "unexpected requests: {:#?}",
            s.failures
        );
        assert!(
            s.expected.is_empty(),
            "expected requests that never came: {:#?}",
            s.expected
        );
        s.seen.clone()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn handle(
    state: &Mutex<State>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let mut s = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let line = format!("{method} {target}");
    s.seen.push(line.clone());
    let fail = |s: &mut State, why: String| {
        s.failures.push(format!("{line}: {why}"));
        status(
            418,
            "Unexpected",
            "the fake API server did not expect this request",
        )
    };
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {TOKEN}") {
        return fail(&mut s, format!("authorization `{auth}`"));
    }
    let node_path = format!("/api/v1/nodes/{}", s.node_name);
    let path = uri.path();
    if method == Method::GET {
        if !s.reads.contains(&target) {
            return fail(&mut s, "a read the test did not allow".into());
        }
        if path == node_path {
            return axum::Json(s.node.clone()).into_response();
        }
        if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
            return status(404, "NotFound", &format!("nodes \"{name}\" not found"));
        }
        if path == "/api/v1/pods" || path.starts_with("/api/v1/namespaces/") {
            let selector = uri
                .query()
                .and_then(|q| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix("fieldSelector="))
                })
                .map(percent_decode)
                .unwrap_or_default();
            let namespace = path
                .strip_prefix("/api/v1/namespaces/")
                .and_then(|rest| rest.strip_suffix("/pods"));
            let items: Vec<Value> = s
                .pods
                .iter()
                .filter(|p| namespace.is_none_or(|ns| p["metadata"]["namespace"] == ns))
                .filter(|p| selects(&selector, p))
                .cloned()
                .collect();
            return axum::Json(json!({
                "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                "items": items,
            }))
            .into_response();
        }
        return fail(&mut s, "no such resource in the fake".into());
    }
    let Some(next) = s.expected.pop_front() else {
        return fail(&mut s, "a write the test did not expect".into());
    };
    let sent: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return fail(&mut s, format!("body is not JSON: {e}")),
    };
    match next {
        Expect::NodePatch {
            body: want,
            status: code,
        } => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if method != Method::PATCH || path != node_path {
                return fail(&mut s, format!("expected PATCH {node_path}"));
            }
            if content_type != "application/merge-patch+json" {
                return fail(&mut s, format!("content-type `{content_type}`"));
            }
            if sent != want {
                return fail(&mut s, format!("patch {sent} is not the expected {want}"));
            }
            if sent["metadata"]["resourceVersion"] != s.node["metadata"]["resourceVersion"] {
                return status(409, "Conflict", "the object has been modified");
            }
            if code != 200 {
                return status(code, "Scripted", "scripted failure");
            }
            merge(&mut s.node, &sent);
            let next_version = s.node["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            s.node["metadata"]["resourceVersion"] = json!(next_version.to_string());
            axum::Json(s.node.clone()).into_response()
        }
        Expect::Evict {
            namespace,
            pod,
            status: code,
        } => {
            let want_path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/eviction");
            if method != Method::POST || path != want_path {
                return fail(&mut s, format!("expected POST {want_path}"));
            }
            let want = json!({
                "apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": pod, "namespace": namespace},
            });
            if sent != want {
                return fail(&mut s, format!("eviction body {sent}"));
            }
            if code == 429 {
                return status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
            }
            s.pods.retain(|p| {
                !(p["metadata"]["name"] == pod.as_str()
                    && p["metadata"]["namespace"] == namespace.as_str())
            });
            status(201, "", "")
        }
    }
}

/// `spec.nodeName=N` and `status.phase!=P` terms, comma-separated (what pivot sends).
fn selects(selector: &str, pod: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((field, value)) = term.split_once("!=") {
            field_value(pod, field) != value
        } else if let Some((field, value)) = term.split_once('=') {
            field_value(pod, field) == value
        } else {
            false
        }
    })
}

fn field_value(pod: &Value, field: &str) -> String {
    let v = field.split('.').fold(pod, |v, k| &v[k]);
    v.as_str().unwrap_or_default().to_owned()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}
