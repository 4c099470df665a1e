//! The REST calls the benchmarks make through the gateway, and direct gRPC
//! channels to the services.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

pub const PASSWORD: &str = "bench-password-1";

#[derive(Clone)]
pub struct Gateway {
    pub base: String,
    pub http: reqwest::Client,
}

impl Gateway {
    /// One keep-alive pool sized for the load, so a benchmark measures
    /// requests and not TCP handshakes.
    pub fn new(base: &str, pool: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(pool.max(1))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), http })
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends and returns the JSON body of a 200, or an error with the body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.request(method.clone(), path, token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        expect_ok(req.send().await.with_context(|| format!("{method} {path}"))?, &method, path).await
    }

    pub async fn ready(&self) -> bool {
        matches!(self.request(Method::GET, "/health/ready", None).send().await, Ok(r) if r.status().is_success())
    }

    pub async fn register(&self, email: &str) -> anyhow::Result<()> {
        let body = json!({"email": email, "password": PASSWORD, "name": "Bench User"});
        self.call(Method::POST, "/v1/auth/register", None, Some(body)).await.map(drop)
    }

    /// The access token.
    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let body = json!({"email": email, "password": password});
        let v = self.call(Method::POST, "/v1/auth/login", None, Some(body)).await?;
        v["tokens"]["accessToken"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("login {email}: no accessToken in {v}"))
    }

    /// A fresh customer: registered, logged in and with a profile (the user
    /// service creates it from the UserRegistered event, so it lags a little).
    pub async fn new_customer(&self, wait_for_profile: bool) -> anyhow::Result<String> {
        let email = format!("bench-{}@bench.test", uuid::Uuid::new_v4().simple());
        self.register(&email).await?;
        let token = self.login(&email, PASSWORD).await?;
        if wait_for_profile {
            for _ in 0..300 {
                let resp = self.request(Method::GET, "/v1/users/me", Some(&token)).send().await?;
                if resp.status() == StatusCode::OK {
                    return Ok(token);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!("profile of {email} never appeared (is the user service consuming user-events?)");
        }
        Ok(token)
    }

    /// Every listed product as (id, sku), following page tokens.
    pub async fn products(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let mut path = "/v1/products?page.pageSize=100".to_owned();
            if !page_token.is_empty() {
                path.push_str(&format!("&page.pageToken={page_token}"));
            }
            let v = self.call(Method::GET, &path, None, None).await?;
            for p in v["products"].as_array().into_iter().flatten() {
                if let (Some(id), Some(sku)) = (p["id"].as_str(), p["sku"].as_str()) {
                    out.push((id.to_owned(), sku.to_owned()));
                }
            }
            match v["page"]["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => page_token = t.to_owned(),
                _ => return Ok(out),
            }
        }
    }
}

pub async fn expect_ok(resp: reqwest::Response, method: &Method, path: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status != StatusCode::OK {
        bail!("{method} {path}: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {path}: body is not JSON: {text}"))
}

/// Proto JSON writes int64 as strings; accept both.
pub fn int(v: &Value) -> i64 {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0)
}

pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("connecting {url}"))
}

/// A gRPC request carrying the caller's bearer token, as the gateway forwards it.
pub fn authorized<T>(message: T, bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("authorization", bearer.clone());
    req
}
