//! auth and user launched in-process against real Postgres, Redis and the
//! Kafka broker: registration reaches the user service as an event, tokens
//! verify through the JWKS served over HTTP, and logout revokes everywhere.
//! Needs the broker at SHOPMESH_TEST_KAFKA_BROKERS (scripts/test.sh starts one).

use std::time::Duration;

use shopmesh_platform::config::{ConfigSource, ServiceConfig};
use shopmesh_platform::runtime::{Launched, ServiceDef, launch};
use shopmesh_platform::shutdown::Shutdown;
use shopmesh_platform::testing::{database_url, drop_databases, kafka_brokers, redis_url};
use tonic::Code;
use uuid::Uuid;

fn base_source(id: &str) -> ConfigSource {
    ConfigSource::from_pairs([
        ("REDIS_URL", redis_url()),
        ("REDIS_KEY_PREFIX", format!("e2e{id}:")),
        ("KAFKA_BROKERS", kafka_brokers()),
        ("KAFKA_TOPIC_PREFIX", format!("e2e{id}.")),
        ("KAFKA_SESSION_TIMEOUT_MS", "3000".to_owned()),
        ("KAFKA_HEARTBEAT_MS", "1000".to_owned()),
        ("GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("SHUTDOWN_GRACE_MS", "3000".to_owned()),
        ("DB_MAX_CONNECTIONS", "5".to_owned()),
    ])
}

async fn start(def: &'static ServiceDef, source: &ConfigSource, id: &str, shutdown: &Shutdown) -> (Launched, String) {
    let name = def.spec.name;
    let db = format!("e2e{id}_{name}");
    let url = database_url(&db).await;
    let source = source.clone().set(&format!("{name}.DATABASE_URL"), url);
    let config = ServiceConfig::load(name, &source, def.spec.needs).unwrap();
    (launch(def, config, shutdown.clone()).await.unwrap(), db)
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_profile_logout() {
    let id = Uuid::now_v7().simple().to_string()[20..].to_owned();
    let shutdown = Shutdown::new();
    let source =
        base_source(&id).set("auth.ADMIN_EMAIL", "root@example.com").set("auth.ADMIN_PASSWORD", "root password");
    let (auth, auth_db) = start(&shopmesh_auth::SERVICE, &source, &id, &shutdown).await;
    let jwks_url = format!("http://{}/.well-known/jwks.json", auth.http_addr);
    let (user, user_db) =
        start(&shopmesh_user::SERVICE, &source.clone().set("JWKS_URL", &jwks_url), &id, &shutdown).await;

    let jwks: serde_json::Value = reqwest::get(&jwks_url).await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");

    use shopmesh_auth::pb as apb;
    use shopmesh_user::pb as upb;
    let channel = |addr| shopmesh_platform::grpc::channel(&format!("http://{addr}")).unwrap();
    let mut auth_client = apb::auth_service_client::AuthServiceClient::new(channel(auth.grpc_addr));
    let mut user_client = upb::user_service_client::UserServiceClient::new(channel(user.grpc_addr));

    let user_id = auth_client
        .register(apb::RegisterRequest {
            email: "ada@example.com".into(),
            password: "correct horse".into(),
            name: "Ada".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user_id;
    let tokens = auth_client
        .login(apb::LoginRequest { email: "ada@example.com".into(), password: "correct horse".into() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();

    // The profile appears once UserRegistered has travelled outbox → Kafka → consumer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let profile = loop {
        match user_client.get_me(bearer(upb::GetMeRequest {}, &tokens.access_token)).await {
            Ok(r) => break r.into_inner().profile.unwrap(),
            Err(e) if e.code() == Code::NotFound && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("GetMe: {e:?}"),
        }
    };
    assert_eq!((profile.user_id, profile.email.as_str()), (user_id, "ada@example.com"));

    // The bootstrapped admin can log in with the admin role.
    let admin = auth_client
        .login(apb::LoginRequest { email: "root@example.com".into(), password: "root password".into() })
        .await
        .unwrap();
    assert!(admin.into_inner().tokens.is_some());

    // GetJwks over gRPC matches the HTTP document.
    let rpc_keys = auth_client.get_jwks(apb::GetJwksRequest {}).await.unwrap().into_inner().keys;
    assert_eq!(rpc_keys[0].kid, jwks["keys"][0]["kid"]);

    auth_client.logout(bearer(apb::LogoutRequest {}, &tokens.access_token)).await.unwrap();
    let after = user_client.get_me(bearer(upb::GetMeRequest {}, &tokens.access_token)).await.unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "denylisted token is refused by other services too");
    let refresh = auth_client.refresh(apb::RefreshRequest { refresh_token: tokens.refresh_token }).await.unwrap_err();
    assert_eq!(refresh.code(), Code::Unauthenticated);

    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = auth.task.await;
        let _ = user.task.await;
    })
    .await;
    drop_databases([auth_db, user_db]).await;
}
