//! The notifier and ListNotifications against real Postgres, with events
//! delivered the way the consumer runner does (inbox row and effect in one
//! transaction).

use prost::Message as _;
use shopmesh_notification::events::Notifier;
use shopmesh_notification::grpc::NotificationApi;
use shopmesh_notification::pb;
use shopmesh_notification::pb::notification_service_server::NotificationService as _;
use shopmesh_platform::auth::{Claims, Principal};
use shopmesh_platform::consumer::{EventHandler as _, HandlerError};
use shopmesh_platform::events::{DomainEvent, ReceivedEvent};
use shopmesh_platform::pb::common::v1::{Money, PageRequest};
use shopmesh_platform::pb::events::v1::{CancelReason, OrderCancelled, OrderConfirmed, PaymentRefunded};
use shopmesh_platform::testing::{ScratchDatabase, drop_databases};
use sqlx::PgPool;
use tonic::{Code, Request};
use uuid::Uuid;

struct Harness {
    pool: PgPool,
    api: NotificationApi,
    db_name: String,
}

async fn harness() -> Harness {
    let ScratchDatabase { pool, name: db_name } =
        ScratchDatabase::create("notification_test", &shopmesh_notification::MIGRATOR).await;
    Harness { api: NotificationApi { pool: pool.clone() }, pool, db_name }
}

impl Harness {
    async fn drop_db(self) {
        self.pool.close().await;
        drop_databases([self.db_name]).await;
    }

    async fn deliver(&self, event: &ReceivedEvent) -> Result<bool, HandlerError> {
        let mut tx = self.pool.begin().await.unwrap();
        if !shopmesh_platform::inbox::record(&mut tx, "notification", event).await.unwrap() {
            return Ok(false);
        }
        Notifier.handle(&mut tx, event).await?;
        tx.commit().await.unwrap();
        Ok(true)
    }

    async fn list(&self, user: Uuid, page_size: i32, page_token: String) -> pb::ListNotificationsResponse {
        let req = pb::ListNotificationsRequest { page: Some(PageRequest { page_size, page_token }) };
        self.api.list_notifications(as_user(user, req)).await.unwrap().into_inner()
    }
}

fn received<E: DomainEvent>(event: &E) -> ReceivedEvent {
    let envelope = shopmesh_platform::events::envelope("test", event);
    ReceivedEvent::decode_envelope(&envelope.encode_to_vec(), E::TOPIC, 0, 0).unwrap()
}

fn as_user<T>(user_id: Uuid, msg: T) -> Request<T> {
    let claims = Claims {
        iss: "shopmesh-auth".into(),
        aud: "shopmesh".into(),
        sub: user_id.to_string(),
        roles: vec!["customer".into()],
        jti: Uuid::now_v7().to_string(),
        iat: 0,
        exp: i64::MAX,
        fam: String::new(),
    };
    let mut req = Request::new(msg);
    req.extensions_mut().insert(Principal { user_id: user_id.to_string(), roles: claims.roles.clone(), claims });
    req
}

#[tokio::test]
async fn saga_outcomes_become_messages_listed_newest_first() {
    let h = harness().await;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let usd = |minor| Some(Money { currency_code: "USD".into(), amount_minor: minor });

    let confirmed = received(&OrderConfirmed {
        order_id: "o-1".into(),
        user_id: alice.to_string(),
        total: usd(1999),
        ..Default::default()
    });
    assert!(h.deliver(&confirmed).await.unwrap());
    assert!(!h.deliver(&confirmed).await.unwrap(), "a redelivered copy is not notified twice");
    h.deliver(&received(&OrderCancelled {
        order_id: "o-1".into(),
        user_id: alice.to_string(),
        reason: CancelReason::CustomerRequest as i32,
        was_paid: true,
    }))
    .await
    .unwrap();
    h.deliver(&received(&PaymentRefunded {
        order_id: "o-1".into(),
        payment_id: Uuid::now_v7().to_string(),
        amount: usd(1234),
        user_id: alice.to_string(),
    }))
    .await
    .unwrap();
    h.deliver(&received(&OrderConfirmed {
        order_id: "o-2".into(),
        user_id: bob.to_string(),
        total: usd(5),
        ..Default::default()
    }))
    .await
    .unwrap();

    let first = h.list(alice, 2, String::new()).await;
    let titles: Vec<&str> = first.notifications.iter().map(|n| n.title.as_str()).collect();
    assert_eq!(titles, ["Refund issued", "Order cancelled"]);
    assert_eq!(first.notifications[0].body, "We refunded USD 12.34 for your order o-1.");
    assert_eq!(first.notifications[0].kind, pb::NotificationKind::OrderRefunded as i32);
    assert!(first.notifications[1].body.contains("you asked us to cancel it"), "{}", first.notifications[1].body);
    let token = first.page.unwrap().next_page_token;
    assert!(!token.is_empty());

    let second = h.list(alice, 2, token).await;
    assert_eq!(second.notifications.len(), 1);
    assert_eq!(second.notifications[0].title, "Order confirmed");
    assert_eq!(second.notifications[0].body, "Your order o-1 is confirmed. We charged USD 19.99.");
    assert_eq!(second.notifications[0].user_id, alice.to_string());
    assert!(second.page.unwrap().next_page_token.is_empty());

    let bobs = h.list(bob, 0, String::new()).await.notifications;
    assert_eq!(bobs.len(), 1, "each user sees only their own");
    h.drop_db().await;
}

/// Consumers lag unevenly: payment's refund can reach this service before
/// order's cancellation that caused it. The feed follows when each outcome
/// happened, not when its event arrived, across pages too.
#[tokio::test]
async fn the_feed_follows_when_outcomes_happened_not_when_their_events_arrived() {
    let h = harness().await;
    let user = Uuid::now_v7();
    let cancelled = received(&OrderCancelled {
        order_id: "o-9".into(),
        user_id: user.to_string(),
        reason: CancelReason::CustomerRequest as i32,
        was_paid: true,
    });
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let refunded = received(&PaymentRefunded {
        order_id: "o-9".into(),
        payment_id: Uuid::now_v7().to_string(),
        amount: Some(Money { currency_code: "USD".into(), amount_minor: 500 }),
        user_id: user.to_string(),
    });
    assert!(h.deliver(&refunded).await.unwrap());
    assert!(h.deliver(&cancelled).await.unwrap());

    let all = h.list(user, 0, String::new()).await.notifications;
    let titles: Vec<&str> = all.iter().map(|n| n.title.as_str()).collect();
    assert_eq!(titles, ["Refund issued", "Order cancelled"]);
    // Postgres keeps microseconds.
    let at = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos / 1000));
    assert_eq!(at(all[0].occurred_at), at(refunded.envelope.occurred_at));
    assert_eq!(at(all[1].occurred_at), at(cancelled.envelope.occurred_at));
    assert!(at(all[1].created_at) > at(all[0].created_at), "the cancellation was stored last");

    let first = h.list(user, 1, String::new()).await;
    assert_eq!(first.notifications[0].title, "Refund issued");
    let second = h.list(user, 1, first.page.unwrap().next_page_token).await;
    assert_eq!(second.notifications.len(), 1);
    assert_eq!(second.notifications[0].title, "Order cancelled");
    assert!(second.page.unwrap().next_page_token.is_empty());
    h.drop_db().await;
}

#[tokio::test]
async fn bad_requests_and_events_are_refused() {
    let h = harness().await;
    let req = pb::ListNotificationsRequest { page: Some(PageRequest { page_size: 5, page_token: "junk".into() }) };
    let err = h.api.list_notifications(as_user(Uuid::now_v7(), req)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page.page_token"), "{}", err.message());

    let anonymous = h.api.list_notifications(Request::new(pb::ListNotificationsRequest::default())).await;
    assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);

    let nobody =
        received(&OrderConfirmed { order_id: "o-1".into(), user_id: String::new(), total: None, ..Default::default() });
    assert!(matches!(h.deliver(&nobody).await, Err(HandlerError::Permanent(_))));
    h.drop_db().await;
}
