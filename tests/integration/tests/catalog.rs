//! Catalog: CRUD with validation and admin-only writes, outbox events in the
//! write's transaction, stable keyset pagination, full-text relevance, and
//! cache-aside in Redis invalidated on write and — on another replica with
//! its own cache — by product-events.

use std::collections::HashSet;
use std::time::Duration;

use fred::prelude::*;
use shopmesh_catalog::pb;
use shopmesh_catalog::pb::catalog_service_client::CatalogServiceClient;
use shopmesh_integration_tests::tokens::{TestIssuer, authed};
use shopmesh_integration_tests::{TestEnv, eventually, redis_url};
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::pb::common::v1::{Money, PageRequest};
use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;

type Client = CatalogServiceClient<Channel>;

struct Setup {
    env: TestEnv,
    issuer: TestIssuer,
    client: Client,
    pool: PgPool,
}

async fn setup() -> Setup {
    let mut env = TestEnv::new();
    let issuer = TestIssuer::start().await;
    issuer.configure(&mut env);
    let svc = env.launch(&shopmesh_catalog::SERVICE).await;
    let client =
        CatalogServiceClient::new(shopmesh_platform::grpc::channel(&format!("http://{}", svc.grpc_addr)).unwrap());
    let pool = shopmesh_platform::db::connect(&env.database_url("catalog").await, 2).await.unwrap();
    Setup { env, issuer, client, pool }
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money { currency_code: "USD".into(), amount_minor })
}

fn product(sku: &str, name: &str, category: &str, cents: i64) -> pb::Product {
    pb::Product {
        sku: sku.into(),
        name: name.into(),
        description: format!("{name} for testing"),
        category: category.into(),
        price: usd(cents),
        image_url: "https://img.example.com/p.jpg".into(),
        attributes: [("color".to_owned(), "red".to_owned())].into(),
        ..Default::default()
    }
}

async fn create(s: &Setup, p: pb::Product) -> pb::Product {
    let admin = s.issuer.admin("admin-1");
    let req = authed(pb::CreateProductRequest { product: Some(p) }, &admin);
    s.client.clone().create_product(req).await.unwrap().into_inner().product.unwrap()
}

async fn get(client: &Client, id: &str) -> Result<pb::Product, tonic::Status> {
    client.clone().get_product(pb::GetProductRequest { id: id.into() }).await.map(|r| r.into_inner().product.unwrap())
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

async fn outbox_types(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM outbox ORDER BY seq").fetch_all(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_validation_admin_only_writes_and_events() {
    let s = setup().await;
    let mut c = s.client.clone();
    let create_req = || pb::CreateProductRequest { product: Some(product("MUG-1", "Blue mug", "Kitchen", 1299)) };

    // Writes need a token, and an admin one.
    assert_eq!(c.create_product(create_req()).await.unwrap_err().code(), Code::Unauthenticated);
    let customer = s.issuer.customer("user-1");
    assert_eq!(c.create_product(authed(create_req(), &customer)).await.unwrap_err().code(), Code::PermissionDenied);

    let created = create(&s, product("MUG-1", "Blue mug", "Kitchen", 1299)).await;
    assert!(created.active, "new products are active");
    assert_eq!(created.price, usd(1299));
    assert_eq!(get(&c, &created.id).await.unwrap(), created);

    let admin = s.issuer.admin("admin-1");
    let dup = c.create_product(authed(create_req(), &admin)).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    for (p, field) in [
        (product("bad sku!", "x", "Kitchen", 1), "product.sku"),
        (product("OK-1", "", "Kitchen", 1), "product.name"),
        (product("OK-1", "x", "Kitchen", -1), "product.price.amount_minor"),
        (
            pb::Product {
                price: Some(Money { currency_code: "usd".into(), amount_minor: 1 }),
                ..product("OK-1", "x", "K", 1)
            },
            "product.price.currency_code",
        ),
        (pb::Product { image_url: "ftp://x".into(), ..product("OK-1", "x", "K", 1) }, "product.image_url"),
    ] {
        let e = c.create_product(authed(pb::CreateProductRequest { product: Some(p) }, &admin)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }

    assert_eq!(get(&c, &uuid::Uuid::now_v7().to_string()).await.unwrap_err().code(), Code::NotFound);
    let bad = get(&c, "nope").await.unwrap_err();
    assert_eq!((bad.code(), bad.message().starts_with("id")), (Code::InvalidArgument, true));

    // Update through the mask only.
    let update = |paths: &[&str], p: pb::Product| pb::UpdateProductRequest {
        id: created.id.clone(),
        product: Some(p),
        update_mask: mask(paths),
    };
    let changes =
        pb::Product { name: "Big blue mug".into(), price: usd(1499), category: String::new(), ..Default::default() };
    let updated = c
        .update_product(authed(update(&["name", "price"], changes.clone()), &admin))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!((updated.name.as_str(), updated.price.clone()), ("Big blue mug", usd(1499)));
    assert_eq!(updated.category, "Kitchen", "unmasked fields are untouched");
    for paths in [&[][..], &["sku"][..]] {
        let e = c.update_product(authed(update(paths, changes.clone()), &admin)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("update_mask"), "{}", e.message());
    }
    assert_eq!(
        c.update_product(authed(update(&["name"], changes.clone()), &customer)).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Archive: idempotent, still readable, gone from listings and categories.
    let other = create(&s, product("PAN-1", "Frying pan", "Kitchen", 2999)).await;
    for _ in 0..2 {
        let archived = c
            .archive_product(authed(pb::ArchiveProductRequest { id: created.id.clone() }, &admin))
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap();
        assert!(!archived.active);
    }
    assert!(!get(&c, &created.id).await.unwrap().active, "archived products still resolve");
    let listed = c.list_products(pb::ListProductsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.products.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), vec![other.id.clone()]);
    let cats = c.list_categories(pb::ListCategoriesRequest {}).await.unwrap().into_inner().categories;
    assert_eq!(cats, vec![pb::Category { name: "Kitchen".into(), product_count: 1 }]);

    // BatchGet: request order, archived included, unknown omitted.
    let ids = vec![other.id.clone(), uuid::Uuid::now_v7().to_string(), created.id.clone()];
    let batch = c.batch_get_products(pb::BatchGetProductsRequest { ids }).await.unwrap().into_inner().products;
    assert_eq!(batch.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec![other.id.as_str(), created.id.as_str()]);
    let too_many = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    assert_eq!(
        c.batch_get_products(pb::BatchGetProductsRequest { ids: too_many }).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Every write's events, committed with it; the second archive emitted nothing.
    assert_eq!(
        outbox_types(&s.pool).await,
        [
            "shopmesh.events.v1.ProductCreated",
            "shopmesh.events.v1.ProductUpdated",
            "shopmesh.events.v1.PriceChanged",
            "shopmesh.events.v1.ProductCreated",
            "shopmesh.events.v1.ProductUpdated",
        ]
    );
    drop(s.env);
}

async fn list_all(c: &Client, base: pb::ListProductsRequest, page_size: i32) -> Vec<pb::Product> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListProductsRequest { page: Some(PageRequest { page_size, page_token: token }), ..base.clone() };
        let resp = c.clone().list_products(req).await.unwrap().into_inner();
        out.extend(resp.products);
        token = resp.page.unwrap_or_default().next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_pagination_and_search() {
    let s = setup().await;
    let c = s.client.clone();
    let outbox = Outbox::new("catalog");
    let first = shopmesh_catalog::seed_demo_catalog(&s.pool, &outbox).await.unwrap();
    let again = shopmesh_catalog::seed_demo_catalog(&s.pool, &outbox).await.unwrap();
    let total = shopmesh_catalog::demo_stock().len();
    assert!(total >= 50);
    assert_eq!((first.inserted, again.inserted, again.already_present), (total, 0, total), "seeding is idempotent");
    assert_eq!(first.products, again.products);
    assert_eq!(outbox_types(&s.pool).await.len(), total, "ProductCreated only for inserted rows");

    // Page through while new products keep arriving: nothing repeats, nothing is skipped.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut n = 0;
    loop {
        let req = pb::ListProductsRequest {
            page: Some(PageRequest { page_size: 7, page_token: token }),
            ..Default::default()
        };
        let resp = c.clone().list_products(req).await.unwrap().into_inner();
        assert!(resp.products.len() <= 7);
        seen.extend(resp.products.into_iter().map(|p| p.id));
        create(&s, product(&format!("NEW-{n}"), "Late arrival", "Misc", 100)).await;
        n += 1;
        token = resp.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    let seeded: HashSet<_> = first.products.iter().map(|(_, id)| id.to_string()).collect();
    assert_eq!(unique, seeded, "exactly the products that existed when paging began");

    // Page size: clamped to 100 above it, rejected below 0.
    for i in n..100 {
        create(&s, product(&format!("NEW-{i}"), "Filler", "Misc", 100)).await;
    }
    let big = pb::ListProductsRequest {
        page: Some(PageRequest { page_size: 1000, ..Default::default() }),
        ..Default::default()
    };
    assert_eq!(c.clone().list_products(big).await.unwrap().into_inner().products.len(), 100);
    let neg = pb::ListProductsRequest {
        page: Some(PageRequest { page_size: -1, ..Default::default() }),
        ..Default::default()
    };
    let e = c.clone().list_products(neg).await.unwrap_err();
    assert!(e.message().starts_with("page.page_size"), "{}", e.message());

    // Filters, and tokens bound to them.
    let books = pb::ListProductsRequest {
        category: "Books".into(),
        min_price_minor: 1500,
        max_price_minor: 3000,
        ..Default::default()
    };
    let found = list_all(&c, books.clone(), 2).await;
    assert!(!found.is_empty());
    assert!(found.iter().all(|p| {
        let cents = p.price.as_ref().unwrap().amount_minor;
        p.category == "Books" && (1500..=3000).contains(&cents)
    }));
    let page = c
        .clone()
        .list_products(pb::ListProductsRequest {
            page: Some(PageRequest { page_size: 1, ..Default::default() }),
            ..books.clone()
        })
        .await
        .unwrap()
        .into_inner();
    let token = page.page.unwrap().next_page_token;
    let reused = pb::ListProductsRequest {
        page: Some(PageRequest { page_size: 1, page_token: token }),
        category: "Outdoor".into(),
        ..Default::default()
    };
    let e = c.clone().list_products(reused).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("page.page_token"), "{}", e.message());
    let inverted = pb::ListProductsRequest { min_price_minor: 10, max_price_minor: 5, ..Default::default() };
    assert_eq!(c.clone().list_products(inverted).await.unwrap_err().code(), Code::InvalidArgument);

    // Search: name matches rank first; paging a search returns the same set as one page.
    let search = |q: &str| pb::ListProductsRequest { q: q.into(), ..Default::default() };
    let hits = list_all(&c, search("coffee grinder"), 100).await;
    assert_eq!(hits[0].sku, "KIT-GRND-005", "{:?}", hits.iter().map(|p| &p.name).collect::<Vec<_>>());
    let hits = list_all(&c, search("Headphones"), 100).await;
    assert_eq!(hits[0].sku, "ELEC-HDPH-001");
    let one_page: Vec<_> = list_all(&c, search("coffee"), 100).await.into_iter().map(|p| p.id).collect();
    let paged: Vec<_> = list_all(&c, search("coffee"), 1).await.into_iter().map(|p| p.id).collect();
    assert!(one_page.len() >= 2);
    assert_eq!(one_page, paged, "search pagination is stable");
    assert!(list_all(&c, search("zzzxqy"), 10).await.is_empty());

    let cats = c.clone().list_categories(pb::ListCategoriesRequest {}).await.unwrap().into_inner().categories;
    assert!(cats.len() >= 6);
    drop(s.env);
}

async fn redis() -> fred::clients::Client {
    let client = Builder::from_config(Config::from_url(&redis_url()).unwrap()).build().unwrap();
    client.init().await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_and_is_invalidated_on_write_and_by_events_on_other_replicas() {
    let mut s = setup().await;
    let a = s.client.clone();
    // Replica B keeps its own cache, so only product-events can invalidate it.
    let b_prefix = format!("t{}b:", s.env.id);
    s.env.set("catalog.REDIS_KEY_PREFIX", b_prefix.clone());
    let b_svc = s.env.launch(&shopmesh_catalog::SERVICE).await;
    let b =
        CatalogServiceClient::new(shopmesh_platform::grpc::channel(&format!("http://{}", b_svc.grpc_addr)).unwrap());
    let redis = redis().await;

    let p = create(&s, product("CACHE-1", "Cached lamp", "Home", 5000)).await;
    assert_eq!(get(&b, &p.id).await.unwrap().name, "Cached lamp");
    let key = format!("{b_prefix}catalog:product:{}", p.id);
    assert_eq!(redis.exists::<i64, _>(&key).await.unwrap(), 1, "first read fills the cache");
    let listed = b.clone().list_products(pb::ListProductsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.products.len(), 1);

    // Changed behind the service's back: B keeps serving its cached copy.
    sqlx::query("UPDATE products SET name = 'Renamed in SQL' WHERE id = $1::uuid")
        .bind(&p.id)
        .execute(&s.pool)
        .await
        .unwrap();
    assert_eq!(get(&b, &p.id).await.unwrap().name, "Cached lamp", "served from cache");
    assert_eq!(get(&a, &p.id).await.unwrap().name, "Renamed in SQL", "A had nothing cached");
    assert_eq!(get(&a, &p.id).await.unwrap().name, "Renamed in SQL");

    // A write through A: A drops its own entry at once …
    let admin = s.issuer.admin("admin-1");
    let req = pb::UpdateProductRequest {
        id: p.id.clone(),
        product: Some(pb::Product { price: usd(4500), ..Default::default() }),
        update_mask: mask(&["price"]),
    };
    a.clone().update_product(authed(req, &admin)).await.unwrap();
    assert_eq!(get(&a, &p.id).await.unwrap().price, usd(4500));
    // … and B drops its entry and its listings when the event arrives.
    eventually("replica B sees the new price", Duration::from_secs(30), || {
        let b = b.clone();
        let id = p.id.clone();
        async move { (get(&b, &id).await.ok()?.price == usd(4500)).then_some(()) }
    })
    .await;
    let p2 = create(&s, product("CACHE-2", "Second lamp", "Home", 100)).await;
    eventually("replica B lists the new product", Duration::from_secs(30), || {
        let b = b.clone();
        let id = p2.id.clone();
        async move {
            let listed = b.clone().list_products(pb::ListProductsRequest::default()).await.ok()?.into_inner();
            listed.products.iter().any(|x| x.id == id).then_some(())
        }
    })
    .await;
    drop(s.env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_raced_a_write_does_not_put_the_old_product_back() {
    use shopmesh_catalog::cache::{Breaker, Cache, Kind};
    let redis = redis().await;
    let prefix = format!("t{}:", uuid::Uuid::now_v7().simple());
    let cache = Cache::new(
        redis.clone(),
        &prefix,
        Duration::from_secs(3600),
        Duration::from_secs(60),
        Breaker::new(Duration::from_secs(5)),
    );
    let id = uuid::Uuid::now_v7();
    let key = cache.product_key(id);
    // A read misses, notes the generation and reads the old row from Postgres …
    let before = cache.generation().await.unwrap();
    // … while a write commits and invalidates …
    assert!(cache.invalidate(Some(id)).await);
    // … so its late fill is refused: the next read goes to Postgres, not to
    // an hour-old price.
    assert!(!cache.put_product(id, b"old".to_vec(), before).await);
    assert_eq!(cache.get(Kind::Product, &key).await, None);
    // A read that began after the write fills as usual.
    let after = cache.generation().await.unwrap();
    assert!(cache.put_product(id, b"new".to_vec(), after).await);
    assert_eq!(cache.get(Kind::Product, &key).await.as_deref(), Some(b"new".as_slice()));
    let _: i64 = redis.del(vec![key, format!("{prefix}catalog:list-gen")]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_keep_working_when_redis_is_down() {
    let mut s = setup().await;
    let p = create(&s, product("NOREDIS-1", "Sturdy lamp", "Home", 5000)).await;
    // A replica whose Redis is unreachable (port 1 refuses connections).
    s.env.set("catalog.REDIS_URL", "redis://127.0.0.1:1");
    let svc = s.env.launch(&shopmesh_catalog::SERVICE).await;
    let c = CatalogServiceClient::new(shopmesh_platform::grpc::channel(&format!("http://{}", svc.grpc_addr)).unwrap());

    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(get(&c, &p.id).await.unwrap().name, "Sturdy lamp");
        let listed = c.clone().list_products(pb::ListProductsRequest::default()).await.unwrap().into_inner();
        assert_eq!(listed.products.len(), 1);
        let batch =
            c.clone().batch_get_products(pb::BatchGetProductsRequest { ids: vec![p.id.clone()] }).await.unwrap();
        assert_eq!(batch.into_inner().products.len(), 1);
        let cats = c.clone().list_categories(pb::ListCategoriesRequest {}).await.unwrap().into_inner();
        assert_eq!(cats.categories.len(), 1);
    }
    // After the first timeout the breaker skips Redis instead of waiting on it each time.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    drop(s.env);
}
