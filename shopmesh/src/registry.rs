//! Every service this binary can run, in start order for `dev`.

use shopmesh_platform::runtime::ServiceDef;

pub static SERVICES: &[&ServiceDef] = &[&shopmesh_auth::SERVICE, &shopmesh_user::SERVICE];

pub fn find(name: &str) -> anyhow::Result<&'static ServiceDef> {
    SERVICES.iter().copied().find(|d| d.spec.name == name).ok_or_else(|| {
        let names: Vec<_> = SERVICES.iter().map(|d| d.spec.name).collect();
        anyhow::anyhow!("unknown service {name:?}; known: {}", names.join(", "))
    })
}
