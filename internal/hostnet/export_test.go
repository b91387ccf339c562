package hostnet

// What the tests of package hostnet_test, which import plan, read of
// this package's insides.
var ListLinks, ListRoutes = listLinks, listRoutes
