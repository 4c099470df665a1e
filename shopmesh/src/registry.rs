//! Every service this binary can run, in start order for `dev`.

use shopmesh_platform::runtime::ServiceDef;

pub static SERVICES: &[&ServiceDef] = &[
    &shopmesh_auth::SERVICE,
    &shopmesh_user::SERVICE,
    &shopmesh_catalog::SERVICE,
    &shopmesh_inventory::SERVICE,
    &shopmesh_cart::SERVICE,
    &shopmesh_order::SERVICE,
    &shopmesh_payment::SERVICE,
    &shopmesh_notification::SERVICE,
];

pub fn find(name: &str) -> anyhow::Result<&'static ServiceDef> {
    SERVICES.iter().copied().find(|d| d.spec.name == name).ok_or_else(|| {
        let names: Vec<_> = SERVICES.iter().map(|d| d.spec.name).chain([GATEWAY]).collect();
        anyhow::anyhow!("unknown service {name:?}; known: {}", names.join(", "))
    })
}

/// The gateway's name in `serve` and its upstream map: each service name with
/// the proto services it serves.
pub const GATEWAY: &str = "gateway";

pub fn gateway_backends() -> Vec<(&'static str, &'static [&'static str])> {
    SERVICES.iter().map(|d| (d.spec.name, d.spec.grpc_services)).collect()
}
