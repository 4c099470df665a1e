//! The platform as web and mobile clients meet it: REST/JSON through the
//! gateway in front of the real auth, user and inventory services (real
//! Postgres, Redis and broker), and the same protection on direct gRPC.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use shopmesh_integration_tests::{TestEnv, eventually};
use shopmesh_platform::runtime::Launched;
use tonic::Code;

const ADMIN_EMAIL: &str = "admin@shopmesh.test";
const ADMIN_PASSWORD: &str = "admin-password-1";

/// auth + user + inventory behind a gateway, sharing one test env.
struct Stack {
    _env: TestEnv,
    auth: Launched,
    user: Launched,
    inventory: Launched,
    gw: String,
    http: Client,
}

impl Stack {
    async fn start(configure: impl FnOnce(&mut TestEnv)) -> Stack {
        let mut env = TestEnv::new();
        env.set("ADMIN_EMAIL", ADMIN_EMAIL);
        env.set("ADMIN_PASSWORD", ADMIN_PASSWORD);
        configure(&mut env);
        let auth = env.launch(&shopmesh_auth::SERVICE).await;
        env.trust_auth(&auth);
        let user = env.launch(&shopmesh_user::SERVICE).await;
        let inventory = env.launch(&shopmesh_inventory::SERVICE).await;
        let gw = env
            .launch_gateway(&[
                (&shopmesh_auth::SERVICE, auth.grpc_addr),
                (&shopmesh_user::SERVICE, user.grpc_addr),
                (&shopmesh_inventory::SERVICE, inventory.grpc_addr),
            ])
            .await;
        Stack { _env: env, auth, user, inventory, gw, http: Client::new() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gw)
    }

    async fn post(&self, path: &str, body: Value, token: Option<&str>) -> Response {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    async fn register(&self, email: &str) -> String {
        let resp = self
            .post("/v1/auth/register", json!({"email": email, "password": "password-123", "name": "Test"}), None)
            .await;
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["userId"].as_str().unwrap().to_owned()
    }

    /// Logs in; returns (access, refresh).
    async fn login(&self, email: &str, password: &str) -> (String, String) {
        let resp = self.post("/v1/auth/login", json!({"email": email, "password": password}), None).await;
        assert_eq!(resp.status(), 200, "login {email}");
        let body: Value = resp.json().await.unwrap();
        let tokens = &body["tokens"];
        assert_eq!(tokens["tokenType"], "Bearer");
        (tokens["accessToken"].as_str().unwrap().to_owned(), tokens["refreshToken"].as_str().unwrap().to_owned())
    }

    /// Waits until the user service has consumed UserRegistered.
    async fn profile(&self, token: &str) -> Value {
        eventually("profile created from UserRegistered", Duration::from_secs(20), || async {
            let resp = self.get("/v1/users/me", Some(token)).await;
            (resp.status() == 200).then_some(())?;
            resp.json::<Value>().await.ok()
        })
        .await
    }

    async fn signup(&self, email: &str) -> String {
        self.register(email).await;
        let (access, _) = self.login(email, "password-123").await;
        self.profile(&access).await;
        access
    }
}

async fn error_body(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("error bodies are JSON");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_me_refresh_logout_then_old_token_is_refused() {
    let s = Stack::start(|_| {}).await;
    let user_id = s.register("Alice@Example.com ").await;
    let (access, refresh) = s.login("alice@example.com", "password-123").await;
    let me = s.profile(&access).await;
    assert_eq!(me["profile"]["userId"], user_id);
    assert_eq!(me["profile"]["email"], "alice@example.com", "email normalised");

    let resp = s.post("/v1/auth/refresh", json!({"refreshToken": refresh}), None).await;
    assert_eq!(resp.status(), 200);
    let tokens = resp.json::<Value>().await.unwrap()["tokens"].clone();
    let (access2, refresh2) = (tokens["accessToken"].as_str().unwrap(), tokens["refreshToken"].as_str().unwrap());
    assert_ne!(refresh2, refresh, "refresh tokens rotate on every use");
    assert_eq!(s.get("/v1/users/me", Some(access2)).await.status(), 200);

    assert_eq!(s.post("/v1/auth/logout", json!({}), Some(access2)).await.status(), 200);
    let (status, body) = error_body(s.get("/v1/users/me", Some(access2)).await).await;
    assert_eq!(status, 401, "logged-out token refused: {body}");
    assert_eq!(body["code"], 16);
    let resp = s.post("/v1/auth/refresh", json!({"refreshToken": refresh2}), None).await;
    assert_eq!(resp.status(), 401, "logout revoked the refresh family");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_family() {
    let s = Stack::start(|_| {}).await;
    s.register("bob@example.com").await;
    let (_, r1) = s.login("bob@example.com", "password-123").await;
    let resp = s.post("/v1/auth/refresh", json!({"refresh_token": r1}), None).await;
    assert_eq!(resp.status(), 200, "snake_case input accepted too");
    let r2 = resp.json::<Value>().await.unwrap()["tokens"]["refreshToken"].as_str().unwrap().to_owned();

    // The stolen, already-rotated token comes back: refused, and the family dies.
    assert_eq!(s.post("/v1/auth/refresh", json!({"refreshToken": r1}), None).await.status(), 401);
    assert_eq!(s.post("/v1/auth/refresh", json!({"refreshToken": r2}), None).await.status(), 401);
}

/// Logout through the gateway ends the session: an access token from
/// before the last refresh is refused as well, by the gateway and by the
/// services behind it. A second login of the same user is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_refuses_every_access_token_of_the_session() {
    let s = Stack::start(|_| {}).await;
    s.register("carol@example.com").await;
    let (access1, refresh1) = s.login("carol@example.com", "password-123").await;
    s.profile(&access1).await;
    let resp = s.post("/v1/auth/refresh", json!({"refreshToken": refresh1}), None).await;
    assert_eq!(resp.status(), 200);
    let access2 = resp.json::<Value>().await.unwrap()["tokens"]["accessToken"].as_str().unwrap().to_owned();
    let (elsewhere, _) = s.login("carol@example.com", "password-123").await;

    assert_eq!(s.post("/v1/auth/logout", json!({}), Some(&access2)).await.status(), 200);
    for (what, token) in [("the token logged out with", &access2), ("an earlier token of the session", &access1)] {
        let (status, body) = error_body(s.get("/v1/users/me", Some(token.as_str())).await).await;
        assert_eq!(status, 401, "{what}: {body}");
        let err = user_client(&s).get_me(with_token(shopmesh_user::pb::GetMeRequest {}, token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what} straight to the user service");
    }
    assert_eq!(s.get("/v1/users/me", Some(&elsewhere)).await.status(), 200, "another session");

    // A reused refresh token ends its session's access tokens the same way.
    let (access3, refresh3) = s.login("carol@example.com", "password-123").await;
    let resp = s.post("/v1/auth/refresh", json!({"refreshToken": refresh3}), None).await;
    let access4 = resp.json::<Value>().await.unwrap()["tokens"]["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(s.post("/v1/auth/refresh", json!({"refreshToken": refresh3}), None).await.status(), 401);
    for token in [&access3, &access4] {
        assert_eq!(s.get("/v1/users/me", Some(token.as_str())).await.status(), 401, "after the reuse");
    }
    assert_eq!(s.get("/v1/users/me", Some(&elsewhere)).await.status(), 200, "another session");
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn decode_part(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Tokens an attacker could produce from a real one.
fn bad_tokens(real: &str) -> Vec<(&'static str, String)> {
    let parts: Vec<&str> = real.split('.').collect();
    let header = decode_part(parts[0]);
    let mut claims = decode_part(parts[1]);
    // Same kid, signed with a key that is not the auth service's.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let forged_input = format!("{}.{}", parts[0], parts[1]);
    let forged =
        format!("{forged_input}.{}", URL_SAFE_NO_PAD.encode(stranger.sign(forged_input.as_bytes()).to_bytes()));
    // A real signature over different claims.
    claims["roles"] = json!(["customer", "admin"]);
    let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    // alg "none", no signature.
    let mut none_header = header.clone();
    none_header["alg"] = json!("none");
    let unsigned = format!("{}.{}.", b64(&none_header), parts[1]);
    vec![("forged", forged), ("tampered", tampered), ("alg none", unsigned), ("garbage", "not.a.jwt".to_owned())]
}

fn user_client(s: &Stack) -> shopmesh_user::pb::user_service_client::UserServiceClient<tonic::transport::Channel> {
    shopmesh_user::pb::user_service_client::UserServiceClient::new(
        shopmesh_platform::grpc::channel(&format!("http://{}", s.user.grpc_addr)).unwrap(),
    )
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_unsigned_and_garbage_tokens_are_refused_at_the_edge_and_by_services() {
    let s = Stack::start(|_| {}).await;
    let access = s.signup("carol@example.com").await;
    let mut direct = user_client(&s);
    assert!(direct.get_me(with_token(shopmesh_user::pb::GetMeRequest {}, &access)).await.is_ok());
    for (what, token) in bad_tokens(&access) {
        let (status, body) = error_body(s.get("/v1/users/me", Some(&token)).await).await;
        assert_eq!(status, 401, "{what} token through the gateway: {body}");
        assert_eq!(body["code"], 16);
        let err = direct.get_me(with_token(shopmesh_user::pb::GetMeRequest {}, &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what} token on direct gRPC: {err:?}");
    }
    let err = direct.get_me(tonic::Request::new(shopmesh_user::pb::GetMeRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "no token on direct gRPC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_bad_token_on_a_public_route_is_ignored_so_refresh_still_works() {
    let s = Stack::start(|_| {}).await;
    s.register("erin@example.com").await;
    let (access, mut refresh) = s.login("erin@example.com", "password-123").await;
    let mut sent: Vec<(&str, String)> =
        bad_tokens(&access).into_iter().map(|(what, t)| (what, format!("Bearer {t}"))).collect();
    sent.push(("basic", "Basic ZXJpbjpwdw==".to_owned()));
    for (what, header) in sent {
        let resp = s
            .http
            .post(s.url("/v1/auth/refresh"))
            .header("authorization", header)
            .json(&json!({"refreshToken": refresh}))
            .send()
            .await
            .unwrap();
        let (status, body) = (resp.status(), resp.json::<Value>().await.unwrap());
        assert_eq!(status, 200, "refresh sent with a {what} authorization header: {body}");
        refresh = body["tokens"]["refreshToken"].as_str().unwrap().to_owned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused_at_the_edge_and_by_services() {
    let s = Stack::start(|env| env.set("ACCESS_TOKEN_TTL_SECS", "1")).await;
    s.register("dave@example.com").await;
    let (access, _) = s.login("dave@example.com", "password-123").await;
    // Past the lifetime plus the verifiers' 5 s clock-skew leeway.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (status, body) = error_body(s.get("/v1/users/me", Some(&access)).await).await;
    assert_eq!(status, 401, "{body}");
    let err = user_client(&s).get_me(with_token(shopmesh_user::pb::GetMeRequest {}, &access)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_never_sees_another_users_data() {
    let s = Stack::start(|_| {}).await;
    let alice = s.signup("alice2@example.com").await;
    let bob = s.signup("bob2@example.com").await;
    let address = json!({"label": "home", "postalAddress": {"recipientName": "Bob", "line1": "1 Main St",
        "city": "Berlin", "postalCode": "10115", "countryCode": "de"}});
    let resp = s.post("/v1/users/me/addresses", address, Some(&bob)).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let added: Value = resp.json().await.unwrap();
    let bobs = added["address"]["id"].as_str().unwrap();
    assert_eq!(added["address"]["postalAddress"]["countryCode"], "DE");

    let path = format!("/v1/users/me/addresses/{bobs}");
    assert_eq!(s.get(&path, Some(&alice)).await.status(), 404, "another user's address does not exist for alice");
    let resp = s.http.delete(s.url(&path)).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let list: Value = s.get("/v1/users/me/addresses", Some(&alice)).await.json().await.unwrap();
    assert!(list["addresses"].as_array().is_none_or(|a| a.is_empty()), "{list}");
    assert_eq!(s.get(&path, Some(&bob)).await.status(), 200, "still there for bob");
    let me: Value = s.get("/v1/users/me", Some(&alice)).await.json().await.unwrap();
    assert_eq!(me["profile"]["email"], "alice2@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rate_limit_trips_at_the_configured_count_and_resets() {
    let s = Stack::start(|env| env.set("RATE_LIMIT_LOGIN", "3/2")).await;
    let wrong = json!({"email": "nobody@example.com", "password": "wrong-password"});
    for remaining in (0..3).rev() {
        let resp = s.post("/v1/auth/login", wrong.clone(), None).await;
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["ratelimit-limit"], "3");
        assert_eq!(resp.headers()["ratelimit-remaining"], remaining.to_string().as_str());
    }
    let resp = s.post("/v1/auth/login", wrong.clone(), None).await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "retry-after {retry_after}");
    assert!(resp.headers().contains_key("ratelimit-reset"));
    let (_, body) = error_body(resp).await;
    assert_eq!(body["code"], 8, "ResourceExhausted: {body}");
    // Other routes have their own bucket.
    assert_eq!(s.get("/.well-known/jwks.json", None).await.status(), 200);
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(s.post("/v1/auth/login", wrong, None).await.status(), 401, "allowed again after the window");
}

/// A stack whose auth checks one password at a time, with the login rate
/// limit out of the way, plus `setting`.
async fn one_password_slot(setting: (&str, &str)) -> Stack {
    Stack::start(|env| {
        env.set("RATE_LIMIT_LOGIN", "1000/60");
        env.set("PASSWORD_HASHES_AT_ONCE", "1");
        env.set(setting.0, setting.1);
    })
    .await
}

impl Stack {
    /// `n` logins with a wrong password for an unknown email, all at once.
    async fn wrong_logins(&self, n: usize) -> Vec<Response> {
        let wrong = json!({"email": "nobody@example.com", "password": "wrong-password"});
        futures::future::join_all((0..n).map(|_| self.post("/v1/auth/login", wrong.clone(), None))).await
    }
}

/// Password hashing is memory- and CPU-hungry: a burst of sign-ins past the
/// slots for it is told to come back (503, Retry-After), not queued without
/// bound, and the service answers again as soon as the burst is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sign_ins_past_the_password_slots_is_told_to_retry() {
    let s = one_password_slot(("PASSWORD_WAIT_MS", "0")).await;
    let (mut refused, mut answered) = (0, 0);
    for resp in s.wrong_logins(12).await {
        match resp.status().as_u16() {
            401 => answered += 1,
            503 => {
                refused += 1;
                assert_eq!(resp.headers()["retry-after"], "1");
                let (_, body) = error_body(resp).await;
                assert_eq!(body["code"], 14, "Unavailable: {body}");
                assert!(body["message"].as_str().unwrap().contains("try again"), "{body}");
            }
            other => panic!("a sign-in in the burst got {other}"),
        }
    }
    assert!(answered >= 1 && refused >= 1, "{answered} answered, {refused} refused");
    assert_eq!(s.wrong_logins(1).await[0].status(), 401, "answered again once the burst is over");
}

/// The wait for a password slot ends a second before the gateway's own
/// deadline, so a sign-in queued too long is told to retry (503) rather
/// than left to time out at the gateway (504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_queued_toward_the_gateways_deadline_is_refused_before_it() {
    let s = one_password_slot(("GATEWAY_TIMEOUT_MS", "1200")).await;
    let statuses: Vec<u16> = s.wrong_logins(40).await.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|&c| c == 401 || c == 503), "{statuses:?}");
    assert!(statuses.contains(&503), "forty checks in a row do not fit in 200 ms: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_400_naming_the_field() {
    let s = Stack::start(|_| {}).await;
    let raw = |body: &'static str| {
        s.http.post(s.url("/v1/auth/register")).header("content-type", "application/json").body(body).send()
    };
    let (status, body) = error_body(raw("{\"email\": ").await.unwrap()).await;
    assert_eq!((status.as_u16(), body["code"].as_i64()), (400, Some(3)), "{body}");

    let (status, body) =
        error_body(raw(r#"{"email":"e@example.com","password":"password-123","nmae":"x"}"#).await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("nmae"), "unknown field named: {body}");

    let (status, body) = error_body(raw(r#"{"email": 5, "password": "password-123"}"#).await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("email"), "wrong type names the field: {body}");

    // Rules the service enforces come back with a BadRequest detail naming the field.
    let resp =
        s.post("/v1/auth/register", json!({"email": "e@example.com", "password": "short", "name": "E"}), None).await;
    let (status, body) = error_body(resp).await;
    assert_eq!(status, 400);
    assert_eq!(body["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest");
    assert_eq!(body["details"][0]["fieldViolations"][0]["field"], "password", "{body}");
    let resp =
        s.post("/v1/auth/register", json!({"email": "not-an-email", "password": "password-123", "name": "E"}), None);
    let (status, body) = error_body(resp.await).await;
    assert_eq!(status, 400);
    assert_eq!(body["details"][0]["fieldViolations"][0]["field"], "email", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_an_oversized_body_gets_the_413_not_a_broken_connection() {
    let s = Stack::start(|_| {}).await;
    // Six times the 1 MiB limit: the gateway decides on the Content-Length
    // long before the client has written it all.
    let big = "x".repeat(6 * 1024 * 1024);
    for _ in 0..3 {
        let resp = s.http.post(s.url("/v1/auth/register")).header("content-type", "application/json").body(big.clone());
        let resp = resp.send().await.expect("the client finishes sending and reads the answer");
        let (status, body) = error_body(resp).await;
        assert_eq!(status, 413, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| m.contains("exceeds")), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_statuses_map_to_http_like_grpc_gateway() {
    let s = Stack::start(|_| {}).await;
    // A second gateway whose NotificationService goes to a server that does not
    // implement it (→ Unimplemented) and PaymentService to a closed port (→ Unavailable).
    let mut side = TestEnv::new();
    side.set(
        "GATEWAY_UPSTREAMS",
        format!(
            "shopmesh.payment.v1.PaymentService=http://127.0.0.1:9,shopmesh.notification.v1.NotificationService=http://{}",
            s.auth.grpc_addr
        ),
    );
    side.trust_auth(&s.auth);
    let gw2 = side.launch_gateway(&[(&shopmesh_auth::SERVICE, s.auth.grpc_addr)]).await;
    let customer = s.signup("erin@example.com").await;
    let (admin, _) = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let product = uuid::Uuid::new_v4();
    let stock_path = format!("/v1/inventory/{product}");

    // 409 AlreadyExists
    let resp = s.post(
        "/v1/auth/register",
        json!({"email": "erin@example.com", "password": "password-123", "name": "E"}),
        None,
    );
    assert_eq!(error_body(resp.await).await.0, 409);
    // 401 Unauthenticated (edge) and 404 NotFound (service)
    assert_eq!(s.get("/v1/users/me", None).await.status(), 401);
    assert_eq!(s.get(&stock_path, None).await.status(), 404, "public GetStock of an unknown product");
    // 403 PermissionDenied: a customer setting stock
    let put =
        |token: &str, body: Value| s.http.put(s.url(&stock_path)).bearer_auth(token.to_owned()).json(&body).send();
    let (status, body) = error_body(put(&customer, json!({"onHand": "5"})).await.unwrap()).await;
    assert_eq!((status.as_u16(), body["code"].as_i64()), (403, Some(7)), "{body}");
    // The admin may; int64 travels as a JSON string both ways.
    let resp = put(&admin, json!({"onHand": "5"})).await.unwrap();
    assert_eq!(resp.status(), 200);
    let stock: Value = resp.json().await.unwrap();
    assert_eq!(stock["stock"]["available"], "5");
    assert_eq!(s.get(&stock_path, None).await.json::<Value>().await.unwrap()["stock"]["available"], "5");
    // 400 FailedPrecondition: on_hand below what is reserved
    let reserve = s
        .post(
            &format!("/v1/inventory/reservations/{}:reserve", uuid::Uuid::now_v7()),
            json!({"lines": [{"productId": product.to_string(), "quantity": 4}]}),
            Some(&admin),
        )
        .await;
    assert_eq!(reserve.status(), 200);
    let (status, body) = error_body(put(&admin, json!({"onHand": "1"})).await.unwrap()).await;
    assert_eq!((status.as_u16(), body["code"].as_i64()), (400, Some(9)), "{body}");
    // 404 unknown route, 405 wrong method
    assert_eq!(error_body(s.get("/v1/nowhere", None).await).await.0, 404);
    let resp = s.http.delete(s.url("/v1/auth/login")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.headers()["allow"].to_str().unwrap().contains("POST"));
    // 413 body over the 1 MiB limit
    let big = "x".repeat(1024 * 1024 + 10);
    let resp = s.http.post(s.url("/v1/auth/register")).header("content-type", "application/json").body(big).send();
    assert_eq!(error_body(resp.await.unwrap()).await.0, 413);
    // 504 DeadlineExceeded: the client's own Grpc-Timeout is honoured
    let resp = s.http.get(s.url("/v1/users/me")).bearer_auth(&customer).header("grpc-timeout", "1n").send();
    assert_eq!(error_body(resp.await.unwrap()).await.0, 504);

    // 501 Unimplemented and 503 Unavailable, on the second gateway
    let resp = s.http.get(format!("{gw2}/v1/notifications")).bearer_auth(&customer).send().await.unwrap();
    let (status, body) = error_body(resp).await;
    assert_eq!((status.as_u16(), body["code"].as_i64()), (501, Some(12)), "{body}");
    let resp = s.http.get(format!("{gw2}/v1/payments")).bearer_auth(&customer).send().await.unwrap();
    let (status, body) = error_body(resp).await;
    assert_eq!((status.as_u16(), body["code"].as_i64()), (503, Some(14)), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_grpc_calls_are_exactly_as_protected_as_the_gateway() {
    use shopmesh_inventory::pb::SetStockRequest;
    use shopmesh_inventory::pb::inventory_service_client::InventoryServiceClient;
    let s = Stack::start(|_| {}).await;
    let customer = s.signup("frank@example.com").await;
    let (admin, _) = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let mut inventory = InventoryServiceClient::new(
        shopmesh_platform::grpc::channel(&format!("http://{}", s.inventory.grpc_addr)).unwrap(),
    );
    let set =
        || SetStockRequest { product_id: uuid::Uuid::new_v4().to_string(), on_hand: 3, low_stock_threshold: None };

    let err = inventory.set_stock(tonic::Request::new(set())).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "no token");
    let err = inventory.set_stock(with_token(set(), &customer)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "customer role");
    for (what, token) in bad_tokens(&admin) {
        let err = inventory.set_stock(with_token(set(), &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what} admin token");
    }
    assert!(inventory.set_stock(with_token(set(), &admin)).await.is_ok(), "admin role");

    // Logout revokes the token for every service, not just the gateway.
    assert_eq!(s.post("/v1/auth/logout", json!({}), Some(&admin)).await.status(), 200);
    let err = inventory.set_stock(with_token(set(), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "revoked token: {err:?}");
    let err = user_client(&s).get_me(with_token(shopmesh_user::pb::GetMeRequest {}, &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}
