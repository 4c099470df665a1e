//! The demo catalog: fixed SKUs, so seeding twice inserts nothing twice and
//! announces only what it inserted.

use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::pb::common::v1::Money;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{NewProduct, RawProduct};
use crate::{events, store};

/// sku, name, category, price in USD cents, initial stock, brand, description.
type Demo = (&'static str, &'static str, &'static str, i64, i64, &'static str, &'static str);

const DEMO: &[Demo] = &[
    // Electronics
    (
        "ELEC-HDPH-001",
        "Wireless Noise-Cancelling Headphones",
        "Electronics",
        19999,
        40,
        "Sonora",
        "Over-ear Bluetooth headphones with adaptive noise cancelling and 30-hour battery life.",
    ),
    (
        "ELEC-EARB-002",
        "True Wireless Earbuds",
        "Electronics",
        8999,
        120,
        "Sonora",
        "Compact earbuds with a pocket charging case, IPX4 sweat resistance and touch controls.",
    ),
    (
        "ELEC-SPKR-003",
        "Portable Bluetooth Speaker",
        "Electronics",
        5999,
        75,
        "Boomly",
        "Waterproof speaker with 360-degree sound and a 12-hour battery, made for the beach or the park.",
    ),
    (
        "ELEC-CHRG-004",
        "65W USB-C Fast Charger",
        "Electronics",
        3499,
        200,
        "Voltix",
        "Gallium-nitride charger with two USB-C ports and one USB-A port; charges a laptop and phone together.",
    ),
    (
        "ELEC-CABL-005",
        "Braided USB-C Cable 2m",
        "Electronics",
        1299,
        500,
        "Voltix",
        "Durable nylon-braided USB-C to USB-C cable supporting 100W charging and 10Gbps data.",
    ),
    (
        "ELEC-KBRD-006",
        "Mechanical Keyboard",
        "Electronics",
        12999,
        35,
        "Keyforge",
        "Tenkeyless mechanical keyboard with hot-swappable brown switches and white backlight.",
    ),
    (
        "ELEC-MOUS-007",
        "Ergonomic Wireless Mouse",
        "Electronics",
        4999,
        90,
        "Keyforge",
        "Vertical ergonomic mouse that reduces wrist strain, with silent clicks and a rechargeable battery.",
    ),
    (
        "ELEC-WCAM-008",
        "1080p Webcam",
        "Electronics",
        6999,
        60,
        "Clearview",
        "Full-HD webcam with autofocus, dual microphones and a privacy shutter.",
    ),
    (
        "ELEC-SSD-009",
        "Portable SSD 1TB",
        "Electronics",
        10999,
        55,
        "Datavault",
        "Pocket-sized solid state drive with read speeds up to 1050MB/s over USB-C.",
    ),
    // Kitchen
    (
        "KIT-MUG-001",
        "Stoneware Coffee Mug",
        "Kitchen",
        1499,
        300,
        "Hearth",
        "Hand-glazed 350ml stoneware mug, microwave and dishwasher safe.",
    ),
    (
        "KIT-KNIF-002",
        "Chef's Knife 20cm",
        "Kitchen",
        7999,
        45,
        "Edgecraft",
        "Forged high-carbon stainless steel chef's knife with a full tang and a walnut handle.",
    ),
    (
        "KIT-PAN-003",
        "Cast Iron Skillet 26cm",
        "Kitchen",
        4499,
        70,
        "Hearth",
        "Pre-seasoned cast iron skillet that goes from stovetop to oven to campfire.",
    ),
    (
        "KIT-KETL-004",
        "Electric Gooseneck Kettle",
        "Kitchen",
        6999,
        50,
        "Brewline",
        "Temperature-controlled pour-over kettle with a precision gooseneck spout and keep-warm mode.",
    ),
    (
        "KIT-GRND-005",
        "Burr Coffee Grinder",
        "Kitchen",
        9999,
        30,
        "Brewline",
        "Conical burr grinder with 40 grind settings, from espresso fine to French press coarse.",
    ),
    (
        "KIT-BORD-006",
        "Bamboo Cutting Board Set",
        "Kitchen",
        2999,
        110,
        "Edgecraft",
        "Three bamboo cutting boards in graduated sizes with juice grooves.",
    ),
    (
        "KIT-POT-007",
        "Enamelled Dutch Oven 5L",
        "Kitchen",
        11999,
        25,
        "Hearth",
        "Heavy enamelled cast iron pot for braising, baking bread and slow-cooked stews.",
    ),
    (
        "KIT-SCAL-008",
        "Digital Kitchen Scale",
        "Kitchen",
        2499,
        140,
        "Brewline",
        "Slim scale accurate to one gram with a tare function and a stainless steel platform.",
    ),
    (
        "KIT-TEA-009",
        "Glass Teapot with Infuser",
        "Kitchen",
        3299,
        80,
        "Brewline",
        "Borosilicate glass teapot, 1 litre, with a removable stainless steel loose-leaf infuser.",
    ),
    // Books
    (
        "BOOK-RUST-001",
        "Programming in Rust",
        "Books",
        4999,
        60,
        "Ferris Press",
        "A practical guide to ownership, borrowing, traits and async Rust, with hands-on projects.",
    ),
    (
        "BOOK-DIST-002",
        "Designing Distributed Systems",
        "Books",
        4599,
        45,
        "Ferris Press",
        "Patterns for reliable services: sagas, outboxes, idempotency and event-driven architecture.",
    ),
    (
        "BOOK-COOK-003",
        "The Weeknight Cookbook",
        "Books",
        2999,
        90,
        "Hearth Books",
        "One hundred quick dinners for busy evenings, each ready in thirty minutes or less.",
    ),
    (
        "BOOK-HIKE-004",
        "Trails of the Alps",
        "Books",
        3499,
        40,
        "Summit Guides",
        "A hiking guide to fifty alpine trails with maps, elevation profiles and hut recommendations.",
    ),
    (
        "BOOK-NOVL-005",
        "The Lighthouse Keeper",
        "Books",
        1899,
        150,
        "Harbor House",
        "A novel about a solitary keeper, a shipwreck and the stranger who washes ashore.",
    ),
    (
        "BOOK-SCIF-006",
        "Signals from Andromeda",
        "Books",
        1699,
        130,
        "Harbor House",
        "A science fiction thriller about first contact told through intercepted radio signals.",
    ),
    (
        "BOOK-GARD-007",
        "Small Space Gardening",
        "Books",
        2499,
        70,
        "Greenleaf",
        "Grow herbs, vegetables and flowers on balconies, windowsills and tiny patios.",
    ),
    (
        "BOOK-PHOT-008",
        "Photography Fundamentals",
        "Books",
        3999,
        55,
        "Clearview Books",
        "Exposure, composition and light explained for new photographers, with exercises.",
    ),
    (
        "BOOK-KIDS-009",
        "The Curious Fox",
        "Books",
        1299,
        200,
        "Harbor House",
        "An illustrated picture book about a young fox exploring the forest at night.",
    ),
    // Outdoor
    (
        "OUT-TENT-001",
        "Two-Person Backpacking Tent",
        "Outdoor",
        24999,
        20,
        "Trailhead",
        "Lightweight freestanding tent weighing 1.6kg, with two doors and a full rainfly.",
    ),
    (
        "OUT-BAG-002",
        "Down Sleeping Bag -5C",
        "Outdoor",
        18999,
        25,
        "Trailhead",
        "Mummy sleeping bag with 650-fill responsibly sourced down, rated to minus five degrees.",
    ),
    (
        "OUT-PACK-003",
        "Hiking Backpack 40L",
        "Outdoor",
        12999,
        40,
        "Trailhead",
        "Ventilated back panel, adjustable torso length, rain cover and hydration sleeve.",
    ),
    (
        "OUT-BOTL-004",
        "Insulated Water Bottle 750ml",
        "Outdoor",
        2999,
        250,
        "Summit",
        "Double-walled stainless steel bottle keeps drinks cold for 24 hours or hot for 12.",
    ),
    (
        "OUT-LAMP-005",
        "Rechargeable Headlamp",
        "Outdoor",
        3999,
        100,
        "Summit",
        "400-lumen headlamp with red night mode and USB-C charging.",
    ),
    (
        "OUT-STOV-006",
        "Compact Camping Stove",
        "Outdoor",
        4999,
        60,
        "Trailhead",
        "Ultralight canister stove that boils a litre of water in under four minutes.",
    ),
    (
        "OUT-CHAIR-007",
        "Folding Camp Chair",
        "Outdoor",
        5999,
        45,
        "Basecamp",
        "Packable camp chair with a steel frame, cup holder and carry bag.",
    ),
    (
        "OUT-POLE-008",
        "Carbon Trekking Poles",
        "Outdoor",
        8999,
        35,
        "Summit",
        "Pair of collapsible carbon fibre poles with cork grips and quick locks.",
    ),
    (
        "OUT-HAMM-009",
        "Camping Hammock",
        "Outdoor",
        3499,
        80,
        "Basecamp",
        "Parachute nylon hammock with tree straps, holds up to 180kg.",
    ),
    // Apparel
    (
        "APP-TEE-001",
        "Organic Cotton T-Shirt",
        "Apparel",
        2499,
        400,
        "Loom & Co",
        "Soft crew-neck tee made from certified organic cotton, regular fit.",
    ),
    (
        "APP-HOOD-002",
        "Heavyweight Hoodie",
        "Apparel",
        5999,
        150,
        "Loom & Co",
        "Brushed fleece pullover hoodie with a kangaroo pocket and ribbed cuffs.",
    ),
    (
        "APP-JACK-003",
        "Waterproof Rain Jacket",
        "Apparel",
        14999,
        60,
        "Trailhead",
        "Breathable three-layer shell with taped seams, pit zips and an adjustable hood.",
    ),
    (
        "APP-SOCK-004",
        "Merino Hiking Socks (3 pack)",
        "Apparel",
        2999,
        300,
        "Summit",
        "Cushioned merino wool socks that stay warm when wet and resist odour.",
    ),
    (
        "APP-CAP-005",
        "Classic Baseball Cap",
        "Apparel",
        1999,
        220,
        "Loom & Co",
        "Six-panel cotton twill cap with an adjustable strap.",
    ),
    (
        "APP-JEAN-006",
        "Slim Fit Jeans",
        "Apparel",
        7999,
        120,
        "Indigo Works",
        "Stretch denim jeans in a dark rinse with a slim, tapered leg.",
    ),
    (
        "APP-SNKR-007",
        "Everyday Running Shoes",
        "Apparel",
        11999,
        80,
        "Stride",
        "Lightweight running shoes with a responsive foam midsole and a breathable mesh upper.",
    ),
    (
        "APP-SCRF-008",
        "Wool Scarf",
        "Apparel",
        3999,
        90,
        "Loom & Co",
        "Lambswool scarf in a classic check pattern, woven in Scotland.",
    ),
    (
        "APP-GLOV-009",
        "Touchscreen Gloves",
        "Apparel",
        2299,
        160,
        "Stride",
        "Knit gloves with conductive fingertips for using a phone in the cold.",
    ),
    // Home Office
    (
        "HOME-DESK-001",
        "Standing Desk Frame",
        "Home Office",
        34999,
        15,
        "Workwell",
        "Dual-motor electric sit-stand desk frame with memory presets and a quiet drive.",
    ),
    (
        "HOME-CHR-002",
        "Ergonomic Office Chair",
        "Home Office",
        29999,
        20,
        "Workwell",
        "Mesh office chair with adjustable lumbar support, 4D armrests and a tilt lock.",
    ),
    (
        "HOME-LAMP-003",
        "LED Desk Lamp",
        "Home Office",
        4999,
        85,
        "Lumen",
        "Dimmable desk lamp with adjustable colour temperature and a wireless charging base.",
    ),
    (
        "HOME-MON-004",
        "27-inch 4K Monitor",
        "Home Office",
        39999,
        18,
        "Clearview",
        "IPS monitor with 4K resolution, USB-C power delivery and a height-adjustable stand.",
    ),
    (
        "HOME-ARM-005",
        "Monitor Arm",
        "Home Office",
        8999,
        40,
        "Workwell",
        "Gas-spring monitor arm for screens up to 32 inches, with cable management.",
    ),
    (
        "HOME-PAD-006",
        "Felt Desk Mat",
        "Home Office",
        2999,
        130,
        "Workwell",
        "Large wool felt desk pad that protects the desk and quiets the keyboard.",
    ),
    (
        "HOME-NOTE-007",
        "Dotted Notebook A5",
        "Home Office",
        1599,
        350,
        "Paperly",
        "Lay-flat notebook with 192 dotted pages of fountain-pen-friendly paper.",
    ),
    (
        "HOME-PEN-008",
        "Fountain Pen",
        "Home Office",
        3499,
        75,
        "Paperly",
        "Steel-nib fountain pen with a converter and a cartridge of blue-black ink.",
    ),
    (
        "HOME-PLNT-009",
        "Desk Plant in Ceramic Pot",
        "Home Office",
        2499,
        65,
        "Greenleaf",
        "Low-maintenance snake plant in a matte ceramic pot, ideal for low light.",
    ),
];

/// What seeding did, and where each demo product lives.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    pub inserted: usize,
    pub already_present: usize,
    /// (sku, product id) of every demo product, sorted by sku.
    pub products: Vec<(String, Uuid)>,
}

/// Demo products' SKUs with their initial stock (for seeding inventory).
pub fn demo_stock() -> Vec<(String, i64)> {
    DEMO.iter().map(|d| (d.0.to_owned(), d.4)).collect()
}

fn demo_products() -> anyhow::Result<Vec<NewProduct>> {
    DEMO.iter()
        .map(|&(sku, name, category, cents, _, brand, description)| {
            let raw = RawProduct {
                sku: sku.into(),
                name: name.into(),
                description: description.into(),
                category: category.into(),
                price: Some(Money { currency_code: "USD".into(), amount_minor: cents }),
                image_url: format!("https://images.shopmesh.example/{}.jpg", sku.to_lowercase()),
                attributes: [("brand".to_owned(), brand.to_owned())].into(),
                active: true,
            };
            NewProduct::parse(sku, &raw).map_err(|e| anyhow::anyhow!("demo product {e}"))
        })
        .collect()
}

/// Inserts the demo catalog (idempotent on SKU); `ProductCreated` is
/// enqueued only for rows actually inserted, in the same transaction.
pub async fn seed_demo_catalog(pool: &PgPool, outbox: &Outbox) -> anyhow::Result<SeedReport> {
    let products = demo_products()?;
    let mut report = SeedReport::default();
    let mut tx = pool.begin().await?;
    for p in &products {
        match store::insert_if_absent(&mut tx, Uuid::now_v7(), p).await? {
            Some(inserted) => {
                outbox.enqueue(&mut tx, &events::created(&inserted)).await?;
                report.inserted += 1;
            }
            None => report.already_present += 1,
        }
    }
    outbox.commit(tx).await?;
    let skus: Vec<String> = products.iter().map(|p| p.sku.as_str().to_owned()).collect();
    report.products = store::ids_by_sku(pool, &skus).await?;
    tracing::info!(inserted = report.inserted, already_present = report.already_present, "demo catalog seeded");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn demo_catalog_is_valid_varied_and_has_unique_skus() {
        let products = demo_products().unwrap();
        assert!(products.len() >= 50);
        let skus: HashSet<_> = products.iter().map(|p| p.sku.as_str()).collect();
        assert_eq!(skus.len(), products.len(), "SKUs are unique");
        let categories: HashSet<_> = products.iter().map(|p| p.category.as_str()).collect();
        assert!(categories.len() >= 5);
        assert_eq!(demo_stock().len(), products.len());
        assert!(demo_stock().iter().all(|(_, n)| *n > 0));
    }
}
