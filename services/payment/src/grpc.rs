//! `shopmesh.payment.v1.PaymentService`: read-only views of the caller's
//! payments. Payments are created by the saga, never by a request.

use shopmesh_platform::auth::RequestAuthExt as _;
use shopmesh_platform::grpc::{db_error, invalid_argument, timestamp};
use shopmesh_platform::paging;
use shopmesh_platform::pb::common::v1::{Money as PbMoney, PageResponse};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::PaymentStatus;
use crate::pb;
use crate::store::{self, ListCursor, PaymentRow};

/// ListPayments, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentQuery {
    pub order_id: Option<Uuid>,
    pub cursor: Option<ListCursor>,
    pub limit: u32,
}

impl PaymentQuery {
    /// What a page token is bound to: the filters of the listing that issued it.
    fn filters(order_id: Option<Uuid>) -> String {
        paging::fingerprint(&["payments", &order_id.map(|id| id.to_string()).unwrap_or_default()])
    }
}

impl TryFrom<pb::ListPaymentsRequest> for PaymentQuery {
    type Error = Status;
    fn try_from(r: pb::ListPaymentsRequest) -> Result<Self, Status> {
        let order_id = match r.order_id.trim() {
            "" => None,
            raw => Some(Uuid::parse_str(raw).map_err(|_| invalid_argument("order_id", "must be a UUID"))?),
        };
        let page = r.page.as_ref();
        Ok(Self {
            order_id,
            cursor: paging::decode_newest_first(page, &Self::filters(order_id))?,
            limit: paging::page_size(page, 20, 100)?,
        })
    }
}

impl From<PaymentStatus> for pb::PaymentStatus {
    fn from(s: PaymentStatus) -> Self {
        match s {
            PaymentStatus::Captured => Self::Captured,
            PaymentStatus::Declined => Self::Declined,
            PaymentStatus::RefundPending => Self::RefundPending,
            PaymentStatus::Refunded => Self::Refunded,
        }
    }
}

impl From<PaymentRow> for pb::Payment {
    fn from(p: PaymentRow) -> Self {
        pb::Payment {
            id: p.id.to_string(),
            order_id: p.order_id.to_string(),
            user_id: p.user_id.to_string(),
            amount: Some(PbMoney { currency_code: p.currency_code.clone(), amount_minor: p.amount_minor }),
            status: pb::PaymentStatus::from(p.status()) as i32,
            provider: p.provider,
            provider_reference: p.provider_reference,
            card_display: p.card_display,
            decline_reason: p.decline_reason,
            created_at: Some(timestamp(p.created_at)),
            updated_at: Some(timestamp(p.updated_at)),
        }
    }
}

fn caller_id(user_id: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(user_id).map_err(|_| Status::unauthenticated("token subject is not a user id"))
}

/// Other users' payments look exactly like missing ones.
fn payment_not_found() -> Status {
    Status::not_found("payment not found")
}

pub struct PaymentApi {
    pub pool: PgPool,
}

#[tonic::async_trait]
impl pb::payment_service_server::PaymentService for PaymentApi {
    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let user_id = caller_id(&request.principal()?.user_id)?;
        let query = PaymentQuery::try_from(request.into_inner())?;
        let mut rows = store::list_payments(&self.pool, user_id, query.order_id, query.cursor, query.limit)
            .await
            .map_err(db_error)?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => {
                paging::encode_token(&(last.created_at, last.id), &PaymentQuery::filters(query.order_id))
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: rows.into_iter().map(Into::into).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let principal = request.principal()?;
        let (user_id, admin) = (caller_id(&principal.user_id)?, principal.is_admin());
        let id = Uuid::parse_str(request.get_ref().id.trim()).map_err(|_| invalid_argument("id", "must be a UUID"))?;
        let row = store::get_payment(&self.pool, id)
            .await
            .map_err(db_error)?
            .filter(|p| admin || p.user_id == user_id)
            .ok_or_else(payment_not_found)?;
        Ok(Response::new(pb::GetPaymentResponse { payment: Some(row.into()) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopmesh_platform::pb::common::v1::PageRequest;

    fn field_of(status: Status) -> String {
        use tonic_types::StatusExt as _;
        status.get_details_bad_request().expect("bad request detail").field_violations[0].field.clone()
    }

    #[test]
    fn list_request_parses_filter_and_page() {
        let q = PaymentQuery::try_from(pb::ListPaymentsRequest::default()).unwrap();
        assert_eq!(q, PaymentQuery { order_id: None, cursor: None, limit: 20 });
        let order = Uuid::now_v7();
        let q = PaymentQuery::try_from(pb::ListPaymentsRequest {
            order_id: order.to_string(),
            page: Some(PageRequest { page_size: 500, page_token: String::new() }),
        })
        .unwrap();
        assert_eq!((q.order_id, q.limit), (Some(order), 100));
    }

    #[test]
    fn list_request_names_the_bad_field() {
        let bad_order = pb::ListPaymentsRequest { order_id: "nope".into(), page: None };
        assert_eq!(field_of(PaymentQuery::try_from(bad_order).unwrap_err()), "order_id");
        let bad_token = pb::ListPaymentsRequest {
            order_id: String::new(),
            page: Some(PageRequest { page_size: 0, page_token: "garbage".into() }),
        };
        assert_eq!(field_of(PaymentQuery::try_from(bad_token).unwrap_err()), "page.page_token");
        let bad_size = pb::ListPaymentsRequest {
            order_id: String::new(),
            page: Some(PageRequest { page_size: -1, page_token: String::new() }),
        };
        assert_eq!(field_of(PaymentQuery::try_from(bad_size).unwrap_err()), "page.page_size");
    }

    #[test]
    fn page_token_round_trips_and_is_bound_to_the_order_filter() {
        let (a, b) = (Some(Uuid::now_v7()), Some(Uuid::now_v7()));
        let cursor: ListCursor =
            (chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(), Uuid::now_v7());
        let request = |order_id: Option<Uuid>, token: &str| pb::ListPaymentsRequest {
            order_id: order_id.map(|id| id.to_string()).unwrap_or_default(),
            page: Some(PageRequest { page_size: 0, page_token: token.into() }),
        };
        for filter in [None, a] {
            let token = paging::encode_token(&cursor, &PaymentQuery::filters(filter));
            assert_eq!(PaymentQuery::try_from(request(filter, &token)).unwrap().cursor, Some(cursor));
        }
        let sized = pb::ListPaymentsRequest {
            page: Some(PageRequest { page_size: 7, ..Default::default() }),
            ..request(a, "")
        };
        assert_eq!(PaymentQuery::try_from(sized).unwrap().limit, 7);
        // Valid base64, but not a token.
        assert_eq!(field_of(PaymentQuery::try_from(request(None, "MTIzNDU")).unwrap_err()), "page.page_token");
        let token = paging::encode_token(&cursor, &PaymentQuery::filters(a));
        for other in [None, b] {
            assert_eq!(field_of(PaymentQuery::try_from(request(other, &token)).unwrap_err()), "page.page_token");
        }
    }
}
