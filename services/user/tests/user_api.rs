//! The user service's handlers and event consumer against real Postgres, with
//! the caller's principal put in the request as the platform's auth layer
//! would. Each test gets a fresh database.

use shopmesh_platform::auth::{Claims, Principal};
use shopmesh_platform::consumer::EventHandler as _;
use shopmesh_platform::events::ReceivedEvent;
use shopmesh_platform::pb::common::v1::PostalAddress;
use shopmesh_platform::pb::events::v1::UserRegistered;
use shopmesh_platform::testing::{ScratchDatabase, drop_databases};
use shopmesh_user::pb::user_service_server::UserService as _;
use shopmesh_user::{events::ProfileCreator, grpc::UserApi, pb};
use sqlx::PgPool;
use tonic::{Code, Request};
use uuid::Uuid;

struct Harness {
    pool: PgPool,
    api: UserApi,
    db_name: String,
}

async fn harness() -> Harness {
    let ScratchDatabase { pool, name: db_name } = ScratchDatabase::create("user_test", &shopmesh_user::MIGRATOR).await;
    Harness { api: UserApi { pool: pool.clone() }, pool, db_name }
}

impl Harness {
    async fn drop_db(self) {
        self.pool.close().await;
        drop_databases([self.db_name]).await;
    }

    /// Delivers UserRegistered the way the consumer runner does: inbox row
    /// and effect in one transaction.
    async fn deliver(&self, event: &ReceivedEvent) -> bool {
        let mut tx = self.pool.begin().await.unwrap();
        if !shopmesh_platform::inbox::record(&mut tx, "user", event).await.unwrap() {
            return false;
        }
        ProfileCreator.handle(&mut tx, event).await.unwrap();
        tx.commit().await.unwrap();
        true
    }
}

fn registered(user_id: Uuid, email: &str, name: &str) -> ReceivedEvent {
    use prost::Message as _;
    let payload = UserRegistered {
        user_id: user_id.to_string(),
        email: email.into(),
        name: name.into(),
        roles: vec!["customer".into()],
    };
    let envelope = shopmesh_platform::events::envelope("auth", &payload);
    ReceivedEvent::decode_envelope(&envelope.encode_to_vec(), "user-events", 0, 0).unwrap()
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

fn field_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status.get_error_details().bad_request().map(|b| b.field_violations[0].field.clone()).unwrap_or_default()
}

fn address(city: &str) -> pb::AddAddressRequest {
    pb::AddAddressRequest {
        address: Some(pb::Address {
            label: "home".into(),
            postal_address: Some(PostalAddress {
                recipient_name: "Ada Lovelace".into(),
                line1: "Unter den Linden 1".into(),
                city: city.into(),
                postal_code: "10117".into(),
                country_code: "DE".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn profile_is_created_once_from_user_registered() {
    let h = harness().await;
    let ada = Uuid::now_v7();

    let missing = h.api.get_me(as_user(ada, pb::GetMeRequest {})).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), "profile not created yet");

    let event = registered(ada, "ada@example.com", "Ada");
    assert!(h.deliver(&event).await);
    assert!(!h.deliver(&event).await, "redelivery is skipped by the inbox");
    // A second event for the same user (e.g. re-published) doesn't overwrite.
    assert!(h.deliver(&registered(ada, "other@example.com", "Other")).await);

    let me = h.api.get_me(as_user(ada, pb::GetMeRequest {})).await.unwrap().into_inner().profile.unwrap();
    assert_eq!((me.user_id, me.email.as_str(), me.name.as_str()), (ada.to_string(), "ada@example.com", "Ada"));
    assert!(me.created_at.is_some());

    let anonymous = h.api.get_me(Request::new(pb::GetMeRequest {})).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    h.drop_db().await;
}

#[tokio::test]
async fn update_me_applies_only_masked_fields() {
    let h = harness().await;
    let ada = Uuid::now_v7();
    h.deliver(&registered(ada, "ada@example.com", "Ada")).await;
    let update = |paths: &[&str], name: &str, phone: &str| pb::UpdateMeRequest {
        profile: Some(pb::Profile {
            name: name.into(),
            phone: phone.into(),
            email: "hijack@example.com".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
    };

    let p = h.api.update_me(as_user(ada, update(&["phone"], "ignored", "+4930123456"))).await.unwrap();
    let p = p.into_inner().profile.unwrap();
    assert_eq!((p.name.as_str(), p.phone.as_str(), p.email.as_str()), ("Ada", "+4930123456", "ada@example.com"));

    let p = h.api.update_me(as_user(ada, update(&["name", "phone"], "Ada L.", ""))).await.unwrap();
    let p = p.into_inner().profile.unwrap();
    assert_eq!((p.name.as_str(), p.phone.as_str()), ("Ada L.", ""));

    for (paths, name, phone, field) in [
        (&[][..], "x", "", "update_mask"),
        (&["email"][..], "x", "", "update_mask"),
        (&["name"][..], " ", "", "profile.name"),
        (&["phone"][..], "x", "0301234", "profile.phone"),
    ] {
        let err = h.api.update_me(as_user(ada, update(paths, name, phone))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(field_of(&err), field);
    }
    let no_mask = pb::UpdateMeRequest { profile: Some(pb::Profile::default()), update_mask: None };
    assert_eq!(field_of(&h.api.update_me(as_user(ada, no_mask)).await.unwrap_err()), "update_mask");

    let stranger = h.api.update_me(as_user(Uuid::now_v7(), update(&["name"], "X", ""))).await.unwrap_err();
    assert_eq!(stranger.code(), Code::NotFound);
    h.drop_db().await;
}

#[tokio::test]
async fn address_book_is_private_defaulted_and_capped() {
    let h = harness().await;
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());

    let first = h.api.add_address(as_user(ada, address("Berlin"))).await.unwrap().into_inner().address.unwrap();
    assert!(first.is_default, "first address becomes the default");
    let second = h.api.add_address(as_user(ada, address("Hamburg"))).await.unwrap().into_inner().address.unwrap();
    assert!(!second.is_default);

    let list = h.api.list_addresses(as_user(ada, pb::ListAddressesRequest {})).await.unwrap().into_inner().addresses;
    assert_eq!(list.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), vec![first.id.as_str(), second.id.as_str()]);

    // Bob sees none of it, and Ada's ids look exactly like missing ones to him.
    let bobs = h.api.list_addresses(as_user(bob, pb::ListAddressesRequest {})).await.unwrap().into_inner().addresses;
    assert!(bobs.is_empty());
    let get = pb::GetAddressRequest { address_id: first.id.clone() };
    assert_eq!(h.api.get_address(as_user(bob, get.clone())).await.unwrap_err().code(), Code::NotFound);
    let del = pb::DeleteAddressRequest { address_id: first.id.clone() };
    assert_eq!(h.api.delete_address(as_user(bob, del.clone())).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(h.api.get_address(as_user(ada, get)).await.unwrap().into_inner().address.unwrap().id, first.id);

    let bad_id = pb::DeleteAddressRequest { address_id: "not-a-uuid".into() };
    let err = h.api.delete_address(as_user(ada, bad_id)).await.unwrap_err();
    assert_eq!((err.code(), field_of(&err).as_str()), (Code::InvalidArgument, "address_id"));

    // Deleting the default promotes the remaining one.
    h.api.delete_address(as_user(ada, del)).await.unwrap();
    let list = h.api.list_addresses(as_user(ada, pb::ListAddressesRequest {})).await.unwrap().into_inner().addresses;
    assert_eq!(list.len(), 1);
    assert!(list[0].is_default && list[0].id == second.id);

    let mut bad = address("Berlin");
    bad.address.as_mut().unwrap().postal_address.as_mut().unwrap().country_code = "DEU".into();
    let err = h.api.add_address(as_user(ada, bad)).await.unwrap_err();
    assert_eq!((err.code(), field_of(&err).as_str()), (Code::InvalidArgument, "address.postal_address.country_code"));
    let err = h.api.add_address(as_user(ada, pb::AddAddressRequest { address: None })).await.unwrap_err();
    assert_eq!(field_of(&err), "address");

    // Concurrent adds can't overshoot the cap of 20.
    let adds = (0..25).map(|i| {
        let pool = h.pool.clone();
        tokio::spawn(async move {
            UserApi { pool }.add_address(as_user(ada, address(&format!("City {i}")))).await.map(|_| ())
        })
    });
    let results: Vec<_> = futures::future::join_all(adds).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 19);
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.code() == Code::FailedPrecondition));
    let list = h.api.list_addresses(as_user(ada, pb::ListAddressesRequest {})).await.unwrap().into_inner().addresses;
    assert_eq!(list.len(), 20);
    assert_eq!(list.iter().filter(|a| a.is_default).count(), 1);
    h.drop_db().await;
}

#[tokio::test]
async fn malformed_user_id_is_a_permanent_failure() {
    use prost::Message as _;
    let h = harness().await;
    let payload = UserRegistered { user_id: "nope".into(), ..Default::default() };
    let envelope = shopmesh_platform::events::envelope("auth", &payload);
    let event = ReceivedEvent::decode_envelope(&envelope.encode_to_vec(), "user-events", 0, 0).unwrap();
    let mut tx = h.pool.begin().await.unwrap();
    let err = ProfileCreator.handle(&mut tx, &event).await.unwrap_err();
    assert!(matches!(err, shopmesh_platform::consumer::HandlerError::Permanent(_)));
    drop(tx);
    h.drop_db().await;
}
