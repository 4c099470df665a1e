//! `shopmesh seed`: loads the demo catalog and its starting stock, through
//! each service's own store code and database. Idempotent: products are
//! keyed by SKU and stock is only set for products inventory has never seen,
//! so a rerun leaves purchases and admin changes alone.

use shopmesh_inventory::domain::{Count, ProductId, StockTarget};
use shopmesh_platform::config::{ConfigSource, ServiceConfig};
use shopmesh_platform::outbox::Outbox;

async fn migrated_pool(
    def: &'static shopmesh_platform::runtime::ServiceDef,
    source: &ConfigSource,
) -> anyhow::Result<sqlx::PgPool> {
    let config = ServiceConfig::load(def.spec.name, source, def.spec.needs)?;
    let url = config.database_url.expect("seeded services use postgres");
    shopmesh_platform::db::ensure_database(&url).await?;
    let pool = shopmesh_platform::db::connect(&url, 2).await?;
    shopmesh_platform::db::migrate(&pool, def.spec.migrator).await?;
    Ok(pool)
}

pub async fn run(source: ConfigSource) -> anyhow::Result<()> {
    let catalog = migrated_pool(&shopmesh_catalog::SERVICE, &source).await?;
    let report = shopmesh_catalog::seed_demo_catalog(&catalog, &Outbox::new("catalog")).await?;

    let inventory_pool = migrated_pool(&shopmesh_inventory::SERVICE, &source).await?;
    let inventory = shopmesh_inventory::store::Store::new(inventory_pool, Outbox::new("inventory"), 5);
    let stock: std::collections::HashMap<String, i64> = shopmesh_catalog::demo_stock().into_iter().collect();
    let mut stocked = 0;
    for (sku, id) in &report.products {
        let product = ProductId::from_uuid(*id);
        if inventory.get_stock(product).await?.is_some() {
            continue;
        }
        let on_hand = stock.get(sku).copied().unwrap_or(0);
        let target = StockTarget {
            on_hand: Count::parse("on_hand", on_hand).map_err(|e| anyhow::anyhow!("{e}"))?,
            low_stock_threshold: None,
        };
        inventory.set_stock(product, target).await.map_err(|e| anyhow::anyhow!("stocking {sku}: {e:?}"))?;
        stocked += 1;
    }
    println!(
        "demo catalog: {} products added, {} already present; stock set for {stocked} products",
        report.inserted, report.already_present
    );
    Ok(())
}
