//! `shopmesh.inventory.v1.InventoryService`: GetStock is public; every other
//! RPC needs the admin role (the saga reserves through events, not here).

use shopmesh_platform::auth::{ROLE_ADMIN, RequestAuthExt as _};
use shopmesh_platform::grpc::{db_error, invalid_argument, timestamp};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::domain::{
    Actor, CommitStep, Count, Invalid, OrderId, ProductId, Refused, ReleaseMode, ReleaseStep, Reservation,
    ReservationLines, ReservationStatus, StockTarget,
};
use crate::pb;
use crate::store::{SetStockError, StockRow, Store};

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Self {
        invalid_argument(&e.field, e.reason)
    }
}

/// A validated ReserveStock.
pub struct ReserveCommand {
    pub order_id: OrderId,
    pub lines: ReservationLines,
}

impl TryFrom<pb::ReserveStockRequest> for ReserveCommand {
    type Error = Status;
    fn try_from(r: pb::ReserveStockRequest) -> Result<Self, Status> {
        let order_id = OrderId::parse("order_id", &r.order_id)?;
        let raw: Vec<(String, i32)> = r.lines.into_iter().map(|l| (l.product_id, l.quantity)).collect();
        Ok(Self { order_id, lines: ReservationLines::parse(&raw)? })
    }
}

/// A validated SetStock.
pub struct SetStockCommand {
    pub product_id: ProductId,
    pub target: StockTarget,
}

impl TryFrom<pb::SetStockRequest> for SetStockCommand {
    type Error = Status;
    fn try_from(r: pb::SetStockRequest) -> Result<Self, Status> {
        Ok(Self {
            product_id: ProductId::parse("product_id", &r.product_id)?,
            target: StockTarget {
                on_hand: Count::parse("on_hand", r.on_hand)?,
                low_stock_threshold: r
                    .low_stock_threshold
                    .map(|t| Count::parse("low_stock_threshold", t))
                    .transpose()?,
            },
        })
    }
}

impl From<StockRow> for pb::StockLevel {
    fn from(s: StockRow) -> Self {
        pb::StockLevel {
            product_id: s.product_id.to_string(),
            available: s.level.available(),
            on_hand: s.level.on_hand,
            reserved: s.level.reserved,
            low_stock_threshold: s.level.low_stock_threshold,
            updated_at: Some(timestamp(s.updated_at)),
        }
    }
}

impl From<ReservationStatus> for pb::ReservationStatus {
    fn from(s: ReservationStatus) -> Self {
        match s {
            ReservationStatus::Reserved => pb::ReservationStatus::Reserved,
            ReservationStatus::Rejected => pb::ReservationStatus::Rejected,
            ReservationStatus::Released => pb::ReservationStatus::Released,
            ReservationStatus::Committed => pb::ReservationStatus::Committed,
        }
    }
}

impl From<Reservation> for pb::Reservation {
    fn from(r: Reservation) -> Self {
        pb::Reservation {
            order_id: r.order_id.to_string(),
            status: pb::ReservationStatus::from(r.status).into(),
            lines: r
                .lines
                .iter()
                .map(|l| pb::ReservationLine { product_id: l.product_id.to_string(), quantity: l.quantity.get() })
                .collect(),
            short_product_ids: r.short_product_ids.iter().map(ToString::to_string).collect(),
        }
    }
}

/// `FailedPrecondition` naming the field, as a google.rpc.PreconditionFailure.
fn refused(r: Refused) -> Status {
    let message = r.to_string();
    Status::with_error_details(
        Code::FailedPrecondition,
        message,
        ErrorDetails::with_precondition_failure_violation("STOCK", r.field, r.reason),
    )
}

fn require_admin<T>(request: &Request<T>) -> Result<(), Status> {
    request.principal()?.require_role(ROLE_ADMIN)
}

pub struct InventoryApi {
    pub store: Store,
}

#[tonic::async_trait]
impl pb::inventory_service_server::InventoryService for InventoryApi {
    async fn get_stock(&self, request: Request<pb::GetStockRequest>) -> Result<Response<pb::GetStockResponse>, Status> {
        let product_id = ProductId::parse("product_id", &request.get_ref().product_id)?;
        // Never stocked is "not found", not "0 available": catalog may know
        // the product, but inventory has no numbers for it yet.
        let row = self
            .store
            .get_stock(product_id)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Status::not_found("no stock recorded for this product"))?;
        Ok(Response::new(pb::GetStockResponse { stock: Some(row.into()) }))
    }

    async fn set_stock(&self, request: Request<pb::SetStockRequest>) -> Result<Response<pb::SetStockResponse>, Status> {
        require_admin(&request)?;
        let cmd = SetStockCommand::try_from(request.into_inner())?;
        let row = self.store.set_stock(cmd.product_id, cmd.target).await.map_err(|e| match e {
            SetStockError::Refused(r) => refused(r),
            SetStockError::Db(e) => db_error(e),
        })?;
        Ok(Response::new(pb::SetStockResponse { stock: Some(row.into()) }))
    }

    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        require_admin(&request)?;
        let cmd = ReserveCommand::try_from(request.into_inner())?;
        // A shortage is an answer (REJECTED with the short products), not an error.
        let reservation = self.store.reserve(cmd.order_id, &cmd.lines).await.map_err(db_error)?;
        Ok(Response::new(pb::ReserveStockResponse { reservation: Some(reservation.into()) }))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        require_admin(&request)?;
        let order_id = OrderId::parse("order_id", &request.get_ref().order_id)?;
        let outcome = self.store.release(order_id, ReleaseMode::KeepCommitted, Actor::Admin).await.map_err(db_error)?;
        match outcome.step {
            ReleaseStep::RefuseCommitted => {
                return Err(Status::failed_precondition("reservation is committed: its stock has shipped"));
            }
            ReleaseStep::RefuseCheckout => {
                return Err(belongs_to_checkout("cancel the order to release its stock"));
            }
            ReleaseStep::NotFound => return Err(Status::not_found("no reservation for this order")),
            _ => {}
        }
        Ok(Response::new(pb::ReleaseReservationResponse { reservation: outcome.reservation.map(Into::into) }))
    }

    async fn commit_reservation(
        &self,
        request: Request<pb::CommitReservationRequest>,
    ) -> Result<Response<pb::CommitReservationResponse>, Status> {
        require_admin(&request)?;
        let order_id = OrderId::parse("order_id", &request.get_ref().order_id)?;
        let outcome = self.store.commit(order_id, Actor::Admin).await.map_err(db_error)?;
        let reservation = match (outcome.step, outcome.reservation) {
            (CommitStep::Commit | CommitStep::AlreadyCommitted, Some(r)) => r,
            (CommitStep::RefuseCheckout, _) => {
                return Err(belongs_to_checkout("it is committed when the order is confirmed"));
            }
            (CommitStep::Refuse(status), _) => {
                return Err(Status::failed_precondition(format!(
                    "reservation is {}; only RESERVED can be committed",
                    status.as_str()
                )));
            }
            _ => return Err(Status::not_found("no reservation for this order")),
        };
        Ok(Response::new(pb::CommitReservationResponse { reservation: Some(reservation.into()) }))
    }
}

/// An admin's release or commit of a reservation an order's checkout made.
fn belongs_to_checkout(instead: &str) -> Status {
    Status::failed_precondition(format!("reservation belongs to an order's checkout, which settles it: {instead}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "00000000-0000-4000-8000-00000000000a";
    const O: &str = "01900000-0000-7000-8000-000000000001";

    fn field(status: Status) -> String {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let details = status.get_error_details();
        details.bad_request().expect("BadRequest detail").field_violations[0].field.clone()
    }

    fn reserve(order_id: &str, lines: &[(&str, i32)]) -> Result<ReserveCommand, Status> {
        ReserveCommand::try_from(pb::ReserveStockRequest {
            order_id: order_id.into(),
            lines: lines.iter().map(|(p, q)| pb::ReservationLine { product_id: (*p).into(), quantity: *q }).collect(),
        })
    }

    #[test]
    fn reserve_request_errors_name_the_field() {
        assert!(reserve(O, &[(P, 1)]).is_ok());
        assert_eq!(field(reserve("o-1", &[(P, 1)]).err().unwrap()), "order_id");
        assert_eq!(field(reserve(O, &[]).err().unwrap()), "lines");
        assert_eq!(field(reserve(O, &[(P, 1), (P, 0)]).err().unwrap()), "lines[1].quantity");
        assert_eq!(field(reserve(O, &[("sku", 1)]).err().unwrap()), "lines[0].product_id");
    }

    #[test]
    fn set_stock_request_errors_name_the_field() {
        let req =
            |on_hand, threshold| pb::SetStockRequest { product_id: P.into(), on_hand, low_stock_threshold: threshold };
        assert!(SetStockCommand::try_from(req(0, None)).is_ok());
        assert_eq!(field(SetStockCommand::try_from(req(-1, None)).err().unwrap()), "on_hand");
        assert_eq!(field(SetStockCommand::try_from(req(1, Some(-1))).err().unwrap()), "low_stock_threshold");
        let bad_product = pb::SetStockRequest { product_id: String::new(), ..req(1, None) };
        assert_eq!(field(SetStockCommand::try_from(bad_product).err().unwrap()), "product_id");
    }

    #[test]
    fn refusal_is_a_failed_precondition_naming_the_field() {
        let status = refused(Refused { field: "on_hand", reason: "too low".into() });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().starts_with("on_hand"), "{}", status.message());
        let details = status.get_error_details();
        assert_eq!(details.precondition_failure().unwrap().violations[0].subject, "on_hand");
    }
}
