// Package contract is what the gateway and an external policy plugin agree
// on, in one place for both sides, the way go-plugin wants it: the
// handshake (magic cookie and protocol version), the plugin map and the
// gRPC glue of the Policy service (sdk/external/proto).
//
// The gateway (plugins/external) uses PluginSet(nil) to dispense a Client;
// a plugin (through sdk/external) serves PluginSet(server). A plugin built
// against another ProtocolVersion is refused at the handshake.
package contract

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pb "github.com/omnigate/omnigate/sdk/external/proto"
)

// ProtocolVersion is the version of the contract: the messages and the
// meaning of policy.proto. It changes only when a plugin built for the
// previous version would be misunderstood.
const ProtocolVersion = 1

// The magic cookie is not a secret: it tells a plugin binary that it was
// started by OmniGate, so that one run by hand says what it is.
const (
	MagicCookieKey   = "OMNIGATE_EXTERNAL_PLUGIN"
	MagicCookieValue = "5f1c2a0e-policy-omnigate"
)

// PluginName is the one plugin a plugin binary serves.
const PluginName = "policy"

// Handshake is the go-plugin handshake of both sides.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   MagicCookieKey,
	MagicCookieValue: MagicCookieValue,
}

// PluginSet is the plugin map: the gateway passes nil, a plugin its server.
func PluginSet(server pb.PolicyServer) plugin.PluginSet {
	return plugin.PluginSet{PluginName: &GRPCPlugin{Impl: server}}
}

// GRPCPlugin is the go-plugin plugin of the Policy service, over gRPC only.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl implements the service, on the plugin's side.
	Impl pb.PolicyServer
}

var _ plugin.GRPCPlugin = (*GRPCPlugin)(nil)

// GRPCServer registers the Policy service with the plugin's gRPC server.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterPolicyServer(s, p.Impl)
	return nil
}

// GRPCClient returns a *Client on the gateway's side.
func (p *GRPCPlugin) GRPCClient(ctx context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &Client{PolicyClient: pb.NewPolicyClient(c), Conn: c, Exited: ctx}, nil
}

// Client is the gateway's end of one plugin process.
type Client struct {
	pb.PolicyClient
	// Conn is the connection to the process, for health checks.
	Conn *grpc.ClientConn
	// Exited is done when the plugin process has exited.
	Exited context.Context
}
