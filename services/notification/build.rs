fn main() {
    shopmesh_protogen::compile(&["shopmesh/notification/v1/notification.proto"], false);
}
