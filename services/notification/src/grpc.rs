//! `shopmesh.notification.v1.NotificationService`: the caller's own
//! notifications, newest first.

use shopmesh_platform::auth::RequestAuthExt as _;
use shopmesh_platform::grpc::{db_error, timestamp};
use shopmesh_platform::paging;
use shopmesh_platform::pb::common::v1::PageResponse;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::Kind;
use crate::pb;
use crate::store::{self, ListCursor, NotificationRow};

/// ListNotifications, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub cursor: Option<ListCursor>,
    pub limit: u32,
}

impl Page {
    /// What a page token is bound to (the listing has no filters of its own).
    fn filters() -> String {
        paging::fingerprint(&["notifications"])
    }
}

impl TryFrom<pb::ListNotificationsRequest> for Page {
    type Error = Status;
    fn try_from(r: pb::ListNotificationsRequest) -> Result<Self, Status> {
        let page = r.page.as_ref();
        Ok(Self {
            cursor: paging::decode_newest_first(page, &Self::filters())?,
            limit: paging::page_size(page, 20, 100)?,
        })
    }
}

impl From<Kind> for pb::NotificationKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::OrderConfirmed => Self::OrderConfirmed,
            Kind::OrderCancelled => Self::OrderCancelled,
            Kind::OrderRefunded => Self::OrderRefunded,
        }
    }
}

impl From<NotificationRow> for pb::Notification {
    fn from(n: NotificationRow) -> Self {
        pb::Notification {
            id: n.id.to_string(),
            user_id: n.user_id.to_string(),
            kind: pb::NotificationKind::from(n.kind()) as i32,
            order_id: n.order_id,
            title: n.title,
            body: n.body,
            created_at: Some(timestamp(n.created_at)),
            occurred_at: Some(timestamp(n.occurred_at)),
        }
    }
}

pub struct NotificationApi {
    pub pool: PgPool,
}

#[tonic::async_trait]
impl pb::notification_service_server::NotificationService for NotificationApi {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let user_id = Uuid::parse_str(&request.principal()?.user_id)
            .map_err(|_| Status::unauthenticated("token subject is not a user id"))?;
        let page = Page::try_from(request.into_inner())?;
        let mut rows = store::list(&self.pool, user_id, page.cursor, page.limit).await.map_err(db_error)?;
        let more = rows.len() > page.limit as usize;
        rows.truncate(page.limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => paging::encode_token(&(last.occurred_at, last.id), &Page::filters()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: rows.into_iter().map(Into::into).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use shopmesh_platform::pb::common::v1::PageRequest;

    use super::*;

    fn page(page_size: i32, page_token: &str) -> Result<Page, Status> {
        Page::try_from(pb::ListNotificationsRequest {
            page: Some(PageRequest { page_size, page_token: page_token.into() }),
        })
    }

    fn field_of(status: Status) -> String {
        use tonic_types::StatusExt as _;
        status.get_details_bad_request().expect("bad request detail").field_violations[0].field.clone()
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(Page::try_from(pb::ListNotificationsRequest::default()).unwrap().limit, 20);
        assert_eq!(page(0, "").unwrap().limit, 20);
        assert_eq!(page(250, "").unwrap().limit, 100);
        assert_eq!(field_of(page(-3, "").unwrap_err()), "page.page_size");
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor: ListCursor =
            (chrono::DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap(), Uuid::now_v7());
        let token = paging::encode_token(&cursor, &Page::filters());
        assert_eq!(page(0, &token).unwrap().cursor, Some(cursor));
        assert_eq!(page(0, "").unwrap().cursor, None);
        assert_eq!(field_of(page(0, "@@").unwrap_err()), "page.page_token");
    }
}
