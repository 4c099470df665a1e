//! `shopmesh.notification.v1.NotificationService`: the caller's own
//! notifications, newest first.

use shopmesh_platform::auth::RequestAuthExt as _;
use shopmesh_platform::grpc::{db_error, invalid_argument};
use shopmesh_platform::pb::common::v1::PageResponse;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{self, Cursor, Invalid, Kind};
use crate::pb;
use crate::store::{self, NotificationRow};

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Self {
        invalid_argument(&e.field, e.reason)
    }
}

/// ListNotifications, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub cursor: Option<Cursor>,
    pub limit: i64,
}

impl TryFrom<pb::ListNotificationsRequest> for Page {
    type Error = Status;
    fn try_from(r: pb::ListNotificationsRequest) -> Result<Self, Status> {
        let page = r.page.unwrap_or_default();
        Ok(Self {
            cursor: Cursor::decode("page.page_token", &page.page_token)?,
            limit: domain::page_size("page.page_size", page.page_size)?,
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
            created_at: Some(prost_types::Timestamp {
                seconds: n.created_at.timestamp(),
                nanos: n.created_at.timestamp_subsec_nanos() as i32,
            }),
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
        let more = rows.len() as i64 > page.limit;
        rows.truncate(page.limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => Cursor { created_at: last.created_at, id: last.id }.encode(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: rows.into_iter().map(Into::into).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }
}
