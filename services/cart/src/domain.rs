//! Cart rules: quantities, line limits, merging, and pricing lines against
//! the catalog's current products in integer minor units. Pure.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shopmesh_catalog::domain::Invalid;
use shopmesh_platform::money::{Currency, Money, MoneyError};
use uuid::Uuid;

pub const MAX_QUANTITY: u8 = 99;
pub const MAX_LINES: usize = 50;

/// 1–99 units of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Quantity(u8);

impl Quantity {
    pub fn parse(field: &str, raw: i32) -> Result<Self, Invalid> {
        Self::try_from(i64::from(raw)).map_err(|reason| Invalid::new(field, reason))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if (1..=i64::from(MAX_QUANTITY)).contains(&v) {
            Ok(Self(v as u8))
        } else {
            Err(format!("must be between 1 and {MAX_QUANTITY}"))
        }
    }
}

impl From<Quantity> for i64 {
    fn from(q: Quantity) -> i64 {
        i64::from(q.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product_id: Uuid,
    pub quantity: Quantity,
    pub added_at: DateTime<Utc>,
    /// The cart version whose write last set the quantity outright: put the
    /// product in, or set it (0: before this was kept). Adding to the line
    /// leaves it.
    #[serde(default)]
    pub quantity_set_in: i64,
}

/// A cart as stored (Postgres, and the Redis copy): what and how many, not prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    /// Bumped on every write.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    /// In the order they were first added.
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    #[error("quantity of {product_id} would be {total}, above the maximum of {MAX_QUANTITY}")]
    QuantityAboveMax { product_id: Uuid, total: u32 },
    #[error("a cart holds at most {MAX_LINES} different products")]
    TooManyLines,
    #[error("product {0} is not in the cart")]
    NotInCart(Uuid),
}

impl Cart {
    pub fn empty(now: DateTime<Utc>) -> Self {
        Self { version: 0, updated_at: now, lines: Vec::new() }
    }

    pub fn product_ids(&self) -> Vec<Uuid> {
        self.lines.iter().map(|l| l.product_id).collect()
    }

    /// The version the write in progress gets: a write changes lines, then
    /// `touch`es once.
    fn next_version(&self) -> i64 {
        self.version + 1
    }

    /// Adds `quantity`, merging with an existing line of the same product.
    pub fn add(&mut self, product_id: Uuid, quantity: Quantity, now: DateTime<Utc>) -> Result<(), CartError> {
        if let Some(line) = self.lines.iter_mut().find(|l| l.product_id == product_id) {
            let total = u32::from(line.quantity.0) + u32::from(quantity.0);
            line.quantity =
                Quantity::try_from(i64::from(total)).map_err(|_| CartError::QuantityAboveMax { product_id, total })?;
            return Ok(());
        }
        if self.lines.len() >= MAX_LINES {
            return Err(CartError::TooManyLines);
        }
        let quantity_set_in = self.next_version();
        self.lines.push(Line { product_id, quantity, added_at: now, quantity_set_in });
        Ok(())
    }

    pub fn set_quantity(&mut self, product_id: Uuid, quantity: Quantity) -> Result<(), CartError> {
        let quantity_set_in = self.next_version();
        let line =
            self.lines.iter_mut().find(|l| l.product_id == product_id).ok_or(CartError::NotInCart(product_id))?;
        line.quantity = quantity;
        line.quantity_set_in = quantity_set_in;
        Ok(())
    }

    /// `false` if the product was not in the cart (removing is idempotent).
    pub fn remove(&mut self, product_id: Uuid) -> bool {
        let before = self.lines.len();
        self.lines.retain(|l| l.product_id != product_id);
        self.lines.len() != before
    }

    pub fn clear(&mut self) {
        self.lines.clear();
    }

    /// Takes out what an order priced from cart version `checked_out`
    /// bought: each product's quantity drops by the ordered amount and the
    /// line goes when nothing is left, so units added since stay. A line
    /// whose quantity was set after `checked_out` (put in again after the
    /// cart was emptied, or given a quantity) is what the customer wants
    /// now and stays as it is; with `checked_out` 0 (unknown) no line is
    /// spared. Products no longer in the cart are skipped.
    pub fn remove_ordered(&mut self, ordered: impl IntoIterator<Item = (Uuid, u32)>, checked_out: i64) {
        for (product_id, bought) in ordered {
            let Some(line) = self.lines.iter_mut().find(|l| l.product_id == product_id) else { continue };
            if checked_out > 0 && line.quantity_set_in > checked_out {
                continue;
            }
            match Quantity::try_from(i64::from(line.quantity.0) - i64::from(bought)) {
                Ok(left) => line.quantity = left,
                Err(_) => self.lines.retain(|l| l.product_id != product_id),
            }
        }
    }

    /// Marks a write: the next version, stamped `now`.
    pub fn touch(&mut self, now: DateTime<Utc>) {
        self.version += 1;
        self.updated_at = now;
    }
}

/// A product as the catalog describes it right now.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogProduct {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub price: Money,
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unavailable {
    #[error("product {0} does not exist")]
    Unknown(Uuid),
    #[error("product {id} ({name}) is no longer available")]
    Archived { id: Uuid, name: String },
}

/// The product can be put in a cart: it exists and is active.
pub fn purchasable(id: Uuid, catalog: &HashMap<Uuid, CatalogProduct>) -> Result<&CatalogProduct, Unavailable> {
    match catalog.get(&id) {
        None => Err(Unavailable::Unknown(id)),
        Some(p) if !p.active => Err(Unavailable::Archived { id, name: p.name.clone() }),
        Some(p) => Ok(p),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PricedLine {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub unit_price: Money,
    pub quantity: Quantity,
    pub line_total: Money,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PricedCart {
    pub lines: Vec<PricedLine>,
    /// `None` for a cart with nothing purchasable in it.
    pub total: Option<Money>,
    pub item_count: u32,
    /// Lines left out because their product is unknown or archived.
    pub unavailable: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("the cart mixes currencies ({0} and {1})")]
    MixedCurrencies(Currency, Currency),
    #[error("cart total overflows")]
    Overflow,
}

impl From<MoneyError> for PricingError {
    fn from(e: MoneyError) -> Self {
        match e {
            MoneyError::CurrencyMismatch(a, b) => PricingError::MixedCurrencies(a, b),
            // Money arithmetic fails only on a mismatch or an overflow.
            _ => PricingError::Overflow,
        }
    }
}

/// Prices `cart` at the catalog's current prices. Lines whose product is
/// gone or archived are listed as unavailable and left out of the total.
pub fn price(cart: &Cart, catalog: &HashMap<Uuid, CatalogProduct>) -> Result<PricedCart, PricingError> {
    let mut lines = Vec::with_capacity(cart.lines.len());
    let mut unavailable = Vec::new();
    let mut total: Option<Money> = None;
    let mut item_count = 0u32;
    for line in &cart.lines {
        let Ok(product) = purchasable(line.product_id, catalog) else {
            unavailable.push(line.clone());
            continue;
        };
        let line_total = product.price.checked_mul(i64::from(line.quantity.get()))?;
        total = Some(match total {
            None => line_total,
            Some(t) => t.checked_add(line_total)?,
        });
        item_count += u32::from(line.quantity.get());
        lines.push(PricedLine {
            product_id: line.product_id,
            sku: product.sku.clone(),
            name: product.name.clone(),
            unit_price: product.price,
            quantity: line.quantity,
            line_total,
        });
    }
    Ok(PricedCart { lines, total, item_count, unavailable })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: i32) -> Quantity {
        Quantity::parse("quantity", n).unwrap()
    }

    fn money(code: &str, amount: i64) -> Money {
        Money::new(Currency::parse(code).unwrap(), amount)
    }

    fn product(id: Uuid, code: &str, amount: i64, active: bool) -> CatalogProduct {
        CatalogProduct {
            id,
            sku: format!("SKU-{amount}"),
            name: format!("P{amount}"),
            price: money(code, amount),
            active,
        }
    }

    #[test]
    fn an_order_of_unknown_cart_version_removes_what_it_bought() {
        let now = Utc::now();
        let (tent, lamp, mug, sock) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut cart = Cart::empty(now);
        cart.add(tent, q(3), now).unwrap();
        cart.add(lamp, q(1), now).unwrap();
        cart.add(mug, q(2), now).unwrap();
        cart.touch(now);
        // Bought 2 tents (1 added since), all lamps, more mugs than are left
        // (a later edit lowered them), and socks no longer in the cart.
        cart.remove_ordered([(tent, 2), (lamp, 1), (mug, 5), (sock, 1)], 0);
        assert_eq!(cart.lines.len(), 1);
        assert_eq!((cart.lines[0].product_id, cart.lines[0].quantity), (tent, q(1)));
    }

    /// One write: `change`, then `touch`, as the service does it.
    fn write(cart: &mut Cart, change: impl FnOnce(&mut Cart)) -> i64 {
        change(cart);
        cart.touch(Utc::now());
        cart.version
    }

    #[test]
    fn what_was_put_in_after_checkout_stays_when_the_order_confirms() {
        let now = Utc::now();
        let (tent, lamp, mug, book) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut cart = Cart::empty(now);
        write(&mut cart, |c| c.add(tent, q(1), now).unwrap());
        write(&mut cart, |c| c.add(lamp, q(2), now).unwrap());
        write(&mut cart, |c| c.add(mug, q(1), now).unwrap());
        let checked_out = write(&mut cart, |c| c.add(book, q(1), now).unwrap());
        // While the order runs: the customer takes the tent out and puts one
        // back, sets the lamps to 3, adds a second mug and a new sock; the
        // book is left alone.
        let sock = Uuid::now_v7();
        write(&mut cart, |c| c.remove(tent).then_some(()).unwrap());
        write(&mut cart, |c| c.add(tent, q(1), now).unwrap());
        write(&mut cart, |c| c.set_quantity(lamp, q(3)).unwrap());
        write(&mut cart, |c| c.add(mug, q(1), now).unwrap());
        write(&mut cart, |c| c.add(sock, q(1), now).unwrap());
        cart.remove_ordered([(tent, 1), (lamp, 2), (mug, 1), (book, 1)], checked_out);
        let left: Vec<_> = cart.lines.iter().map(|l| (l.product_id, l.quantity)).collect();
        assert_eq!(left, [(lamp, q(3)), (mug, q(1)), (tent, q(1)), (sock, q(1))]);
    }

    #[test]
    fn an_emptied_and_refilled_cart_keeps_its_new_lines() {
        let now = Utc::now();
        let book = Uuid::now_v7();
        let mut cart = Cart::empty(now);
        let checked_out = write(&mut cart, |c| c.add(book, q(1), now).unwrap());
        write(&mut cart, Cart::clear);
        write(&mut cart, |c| c.add(book, q(1), now).unwrap());
        cart.remove_ordered([(book, 1)], checked_out);
        assert_eq!(cart.lines.len(), 1, "the book put back after checkout stays");
    }

    #[test]
    fn two_orders_of_one_line_take_what_each_bought_in_either_order() {
        let now = Utc::now();
        let book = Uuid::now_v7();
        let mut cart = Cart::empty(now);
        let first = write(&mut cart, |c| c.add(book, q(1), now).unwrap());
        // Ordered again with one more: the second order bought 2.
        let second = write(&mut cart, |c| c.add(book, q(1), now).unwrap());
        cart.remove_ordered([(book, 2)], second);
        assert!(cart.lines.is_empty());
        // The first order's confirmation, late, finds nothing left to take.
        cart.remove_ordered([(book, 1)], first);
        assert!(cart.lines.is_empty());
    }

    #[test]
    fn quantity_is_between_1_and_99() {
        for bad in [0, -1, 100, i32::MAX, i32::MIN] {
            assert_eq!(Quantity::parse("quantity", bad).unwrap_err().field, "quantity", "{bad}");
        }
        assert_eq!(q(1).get(), 1);
        assert_eq!(q(99).get(), 99);
    }

    #[test]
    fn adding_merges_lines_and_caps_the_merged_quantity() {
        let now = Utc::now();
        let mut cart = Cart::empty(now);
        let a = Uuid::now_v7();
        cart.add(a, q(40), now).unwrap();
        cart.add(a, q(59), now).unwrap();
        assert_eq!(cart.lines.len(), 1);
        assert_eq!(cart.lines[0].quantity, q(99));
        assert_eq!(cart.add(a, q(1), now), Err(CartError::QuantityAboveMax { product_id: a, total: 100 }));
        assert_eq!(cart.lines[0].quantity, q(99), "a rejected add changes nothing");
    }

    #[test]
    fn at_most_50_distinct_lines() {
        let now = Utc::now();
        let mut cart = Cart::empty(now);
        for _ in 0..MAX_LINES {
            cart.add(Uuid::now_v7(), q(1), now).unwrap();
        }
        assert_eq!(cart.add(Uuid::now_v7(), q(1), now), Err(CartError::TooManyLines));
        // Merging into an existing line is still fine at the limit.
        let first = cart.lines[0].product_id;
        cart.add(first, q(1), now).unwrap();
    }

    #[test]
    fn update_remove_clear_and_touch() {
        let now = Utc::now();
        let mut cart = Cart::empty(now);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        cart.add(a, q(1), now).unwrap();
        cart.set_quantity(a, q(7)).unwrap();
        assert_eq!(cart.lines[0].quantity, q(7));
        assert_eq!(cart.set_quantity(b, q(1)), Err(CartError::NotInCart(b)));
        assert!(!cart.remove(b));
        assert!(cart.remove(a));
        cart.add(b, q(2), now).unwrap();
        cart.clear();
        assert!(cart.lines.is_empty());
        cart.touch(now);
        cart.touch(now);
        assert_eq!(cart.version, 2);
    }

    #[test]
    fn pricing_uses_integer_minor_units() {
        let now = Utc::now();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut cart = Cart::empty(now);
        cart.add(a, q(3), now).unwrap();
        cart.add(b, q(2), now).unwrap();
        let catalog = HashMap::from([(a, product(a, "USD", 1999, true)), (b, product(b, "USD", 5, true))]);
        let priced = price(&cart, &catalog).unwrap();
        assert_eq!(priced.lines[0].line_total, money("USD", 5997));
        assert_eq!(priced.lines[1].line_total, money("USD", 10));
        assert_eq!(priced.total, Some(money("USD", 6007)));
        assert_eq!(priced.item_count, 5);
        assert!(priced.unavailable.is_empty());
    }

    #[test]
    fn pricing_leaves_out_unavailable_products_and_rejects_mixed_currencies() {
        let now = Utc::now();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut cart = Cart::empty(now);
        for id in [a, b, c] {
            cart.add(id, q(1), now).unwrap();
        }
        let catalog = HashMap::from([(a, product(a, "USD", 100, true)), (b, product(b, "USD", 200, false))]);
        let priced = price(&cart, &catalog).unwrap();
        assert_eq!(priced.total, Some(money("USD", 100)));
        let left_out: Vec<Uuid> = priced.unavailable.iter().map(|l| l.product_id).collect();
        assert_eq!(left_out, vec![b, c]);

        let mixed = HashMap::from([(a, product(a, "USD", 100, true)), (b, product(b, "EUR", 200, true))]);
        assert!(matches!(price(&cart, &mixed), Err(PricingError::MixedCurrencies(_, _))));

        let huge = HashMap::from([(a, product(a, "USD", i64::MAX / 2, true))]);
        let mut big = Cart::empty(now);
        big.add(a, q(3), now).unwrap();
        assert_eq!(price(&big, &huge), Err(PricingError::Overflow));

        assert_eq!(price(&Cart::empty(now), &catalog).unwrap().total, None);
    }

    #[test]
    fn purchasable_distinguishes_unknown_from_archived() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let catalog = HashMap::from([(a, product(a, "USD", 1, false))]);
        assert!(matches!(purchasable(a, &catalog), Err(Unavailable::Archived { .. })));
        assert_eq!(purchasable(b, &catalog), Err(Unavailable::Unknown(b)));
    }

    #[test]
    fn stored_cart_round_trips_and_rejects_bad_quantities() {
        let now = Utc::now();
        let mut cart = Cart::empty(now);
        cart.add(Uuid::now_v7(), q(5), now).unwrap();
        let json = serde_json::to_string(&cart).unwrap();
        assert_eq!(serde_json::from_str::<Cart>(&json).unwrap(), cart);
        let bad = json.replace("\"quantity\":5", "\"quantity\":500");
        assert!(serde_json::from_str::<Cart>(&bad).is_err());
    }
}
