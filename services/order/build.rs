fn main() {
    shopmesh_protogen::compile(&["shopmesh/order/v1/order.proto"], false);
}
