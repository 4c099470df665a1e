//! A whole shop for tests: every service plus the gateway on one test env,
//! with helpers for what a customer and an admin do over REST.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use reqwest::{Client, Response};
use serde_json::{Value, json};
use shopmesh_platform::runtime::{Launched, ServiceDef};
use shopmesh_platform::shutdown::Shutdown;

use crate::process::ServiceProcess;
use crate::{TestEnv, eventually};

pub const ADMIN_EMAIL: &str = "admin@shop.test";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
/// How long a saga may take to settle in tests.
pub const SAGA: Duration = Duration::from_secs(45);

pub struct Shop {
    /// Services run as their own processes (declared before `env`, so they
    /// are stopped before the env drops their databases).
    processes: Vec<ServiceProcess>,
    pub env: TestEnv,
    pub gw: String,
    pub http: Client,
    pub admin: String,
    /// The payment service and its own shutdown (tests stop and restart it;
    /// `None` when it is down or runs as a process).
    pub payment: Option<(Launched, Shutdown)>,
    /// The order service and its own shutdown, likewise (`None` when it
    /// runs as a process).
    pub order: Option<(Launched, Shutdown)>,
}

pub fn url(l: &Launched) -> String {
    format!("http://{}", l.grpc_addr)
}

impl Shop {
    /// Every service plus the gateway. `with_payment: false` leaves payment
    /// down (the saga then stalls after reserving stock).
    pub async fn start(configure: impl FnOnce(&mut TestEnv), with_payment: bool) -> Shop {
        Self::assemble(configure, with_payment, None, &[]).await
    }

    /// Every service plus the gateway, with each of `processes` run by the
    /// `shopmesh` binary `bin` in a process of its own, which a test can kill
    /// outright (`Shop::process`). Inventory, order and payment can run so.
    pub async fn start_with_processes(
        configure: impl FnOnce(&mut TestEnv),
        bin: &Path,
        processes: &[&'static ServiceDef],
    ) -> Shop {
        Self::assemble(configure, true, Some(bin), processes).await
    }

    async fn assemble(
        configure: impl FnOnce(&mut TestEnv),
        with_payment: bool,
        bin: Option<&Path>,
        as_processes: &[&'static ServiceDef],
    ) -> Shop {
        let mut env = TestEnv::new();
        env.set("ADMIN_EMAIL", ADMIN_EMAIL);
        env.set("ADMIN_PASSWORD", ADMIN_PASSWORD);
        configure(&mut env);
        let auth = env.launch(&shopmesh_auth::SERVICE).await;
        env.trust_auth(&auth);
        let user = env.launch(&shopmesh_user::SERVICE).await;
        let catalog = env.launch(&shopmesh_catalog::SERVICE).await;
        env.set("CATALOG_URL", url(&catalog));
        env.set("USER_URL", url(&user));
        let mut processes = Vec::new();
        let mut spawned = async |env: &TestEnv, def: &'static ServiceDef| -> Option<SocketAddr> {
            if !as_processes.iter().any(|p| p.spec.name == def.spec.name) {
                return None;
            }
            let process = ServiceProcess::start(env, bin.expect("a shopmesh binary"), def).await;
            let addr = process.grpc_addr;
            processes.push(process);
            Some(addr)
        };
        let inventory = match spawned(&env, &shopmesh_inventory::SERVICE).await {
            Some(addr) => addr,
            None => env.launch(&shopmesh_inventory::SERVICE).await.grpc_addr,
        };
        let cart = env.launch(&shopmesh_cart::SERVICE).await;
        env.set("CART_URL", url(&cart));
        let (order_addr, order) = match spawned(&env, &shopmesh_order::SERVICE).await {
            Some(addr) => (addr, None),
            None => {
                let stop = env.shutdown.child();
                let order = env.launch_stoppable(&shopmesh_order::SERVICE, stop.clone()).await;
                (order.grpc_addr, Some((order, stop)))
            }
        };
        let notification = env.launch(&shopmesh_notification::SERVICE).await;
        let mut backends: Vec<(&ServiceDef, SocketAddr)> = vec![
            (&shopmesh_auth::SERVICE, auth.grpc_addr),
            (&shopmesh_user::SERVICE, user.grpc_addr),
            (&shopmesh_catalog::SERVICE, catalog.grpc_addr),
            (&shopmesh_inventory::SERVICE, inventory),
            (&shopmesh_cart::SERVICE, cart.grpc_addr),
            (&shopmesh_order::SERVICE, order_addr),
            (&shopmesh_notification::SERVICE, notification.grpc_addr),
        ];
        let mut payment = None;
        if with_payment {
            let addr = match spawned(&env, &shopmesh_payment::SERVICE).await {
                Some(addr) => addr,
                None => {
                    let stop = env.shutdown.child();
                    let launched = env.launch_stoppable(&shopmesh_payment::SERVICE, stop.clone()).await;
                    let addr = launched.grpc_addr;
                    payment = Some((launched, stop));
                    addr
                }
            };
            backends.push((&shopmesh_payment::SERVICE, addr));
        }
        let gw = env.launch_gateway(&backends).await;
        let http = Client::new();
        let admin = login(&http, &gw, ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(processes.len(), as_processes.len(), "only inventory, order and payment run as processes");
        Shop { processes, env, gw, http, admin, payment, order }
    }

    /// `def`, run as its own process.
    pub fn process(&mut self, def: &ServiceDef) -> &mut ServiceProcess {
        let name = def.spec.name;
        self.processes.iter_mut().find(|p| p.def.spec.name == name).unwrap_or_else(|| panic!("{name} is no process"))
    }

    /// Stops the service held in `slot` and waits until its process is
    /// gone; returns the address it served on.
    pub async fn stop(slot: &mut Option<(Launched, Shutdown)>) -> SocketAddr {
        let (running, stop) = slot.take().expect("service is running");
        stop.trigger();
        running.task.await.expect("service task").expect("service stopped cleanly");
        running.grpc_addr
    }

    /// Starts `def` again on `addr`, where the gateway expects it.
    pub async fn restart(&mut self, def: &'static ServiceDef, addr: SocketAddr) -> (Launched, Shutdown) {
        self.env.set(&format!("{}.GRPC_ADDR", def.spec.name), addr.to_string());
        let stop = self.env.shutdown.child();
        (self.env.launch_stoppable(def, stop.clone()).await, stop)
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.gw)
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> Response {
        let mut req = self.http.request(method, self.at(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    pub async fn ok(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> Value {
        let resp = self.send(method.clone(), path, token, body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// A product with `stock` units; returns its id.
    pub async fn product(&self, sku: &str, price_minor: i64, stock: i64) -> String {
        let body = json!({"sku": sku, "name": format!("Product {sku}"), "category": "test",
            "price": {"currencyCode": "USD", "amountMinor": price_minor.to_string()}});
        let created = self.ok(reqwest::Method::POST, "/v1/products", &self.admin, Some(body)).await;
        let id = created["product"]["id"].as_str().unwrap().to_owned();
        self.ok(
            reqwest::Method::PUT,
            &format!("/v1/inventory/{id}"),
            &self.admin,
            Some(json!({"onHand": stock.to_string()})),
        )
        .await;
        id
    }

    pub async fn customer(&self, email: &str) -> String {
        let resp = self
            .http
            .post(self.at("/v1/auth/register"))
            .json(&json!({"email": email, "password": "password-123", "name": "Customer"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        login(&self.http, &self.gw, email, "password-123").await
    }

    pub async fn add_to_cart(&self, token: &str, product: &str, quantity: i32) {
        let body = json!({"productId": product, "quantity": quantity});
        self.ok(reqwest::Method::POST, "/v1/cart/items", token, Some(body)).await;
    }

    pub async fn checkout(&self, token: &str, payment_token: &str) -> Value {
        let body = json!({"paymentToken": payment_token, "shippingAddress": address()});
        self.ok(reqwest::Method::POST, "/v1/orders", token, Some(body)).await["order"].clone()
    }

    /// POST /v1/orders with an Idempotency-Key, sent as its UTF-8 bytes; the
    /// response as it came (a reused key may be refused).
    pub async fn checkout_with_key(&self, token: &str, key: &str, body: &Value) -> reqwest::Response {
        let key = reqwest::header::HeaderValue::from_bytes(key.as_bytes()).expect("a header value");
        let request = self.http.post(self.at("/v1/orders")).bearer_auth(token).header("Idempotency-Key", key);
        request.json(body).send().await.expect("POST /v1/orders")
    }

    pub async fn order(&self, token: &str, id: &str) -> Value {
        self.ok(reqwest::Method::GET, &format!("/v1/orders/{id}"), token, None).await["order"].clone()
    }

    /// Waits for the order to leave PENDING; returns it.
    pub async fn final_order(&self, token: &str, id: &str) -> Value {
        eventually(&format!("order {id} final"), SAGA, || async {
            let order = self.order(token, id).await;
            (order["status"] != "ORDER_STATUS_PENDING").then_some(order)
        })
        .await
    }

    /// (available, on_hand, reserved) as the admin sees it.
    pub async fn stock(&self, product: &str) -> (i64, i64, i64) {
        let s = self.ok(reqwest::Method::GET, &format!("/v1/inventory/{product}"), &self.admin, None).await;
        let n = |k: &str| s["stock"][k].as_str().unwrap_or("0").parse::<i64>().unwrap();
        (n("available"), n("onHand"), n("reserved"))
    }

    pub async fn payments(&self, token: &str, order: &str) -> Vec<Value> {
        let p = self.ok(reqwest::Method::GET, &format!("/v1/payments?orderId={order}"), token, None).await;
        p["payments"].as_array().cloned().unwrap_or_default()
    }

    pub async fn notifications(&self, token: &str) -> Vec<Value> {
        let n = self.ok(reqwest::Method::GET, "/v1/notifications", token, None).await;
        n["notifications"].as_array().cloned().unwrap_or_default()
    }

    pub async fn cart_lines(&self, token: &str) -> usize {
        let c = self.ok(reqwest::Method::GET, "/v1/cart", token, None).await;
        c["cart"]["lines"].as_array().map(Vec::len).unwrap_or(0)
    }
}

pub async fn login(http: &Client, gw: &str, email: &str, password: &str) -> String {
    let resp = http.post(format!("{gw}/v1/auth/login")).json(&json!({"email": email, "password": password})).send();
    let body: Value = resp.await.unwrap().json().await.unwrap();
    body["tokens"]["accessToken"].as_str().unwrap_or_else(|| panic!("login {email}: {body}")).to_owned()
}

pub fn address() -> Value {
    json!({"recipientName": "Grace Hopper", "line1": "1 Harbor St", "city": "Arlington", "postalCode": "22201",
        "countryCode": "US"})
}

pub fn history(order: &Value) -> Vec<String> {
    order["history"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap().to_owned()).collect()
}

/// Empties the cart, adds one unit and checks out; returns the order id.
pub async fn place_single_item_order(shop: &Shop, token: &str, product: &str) -> String {
    shop.ok(reqwest::Method::DELETE, "/v1/cart", token, None).await;
    shop.add_to_cart(token, product, 1).await;
    shop.checkout(token, "tok_visa").await["id"].as_str().unwrap().to_owned()
}
