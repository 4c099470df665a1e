fn main() {
    shopmesh_protogen::compile(&["shopmesh/payment/v1/payment.proto"], false);
}
