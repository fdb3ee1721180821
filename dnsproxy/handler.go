package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// ServeDNS answers one query. Every query gets an answer: malformed ones
// FORMERR/NOTIMP, unreachable resolvers SERVFAIL within UpstreamTimeout.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	start := time.Now()
	route := routeLocal
	var reply *dns.Msg
	func() {
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("dns handler panic", "panic", fmt.Sprint(p))
				reply = new(dns.Msg).SetRcode(r, dns.RcodeServerFailure)
			}
		}()
		ctx, cancel := context.WithTimeout(s.baseCtx, s.timeout)
		defer cancel()
		reply, route = s.resolve(ctx, r)
	}()
	s.finish(w, r, reply)
	s.m.queries.WithLabelValues(route, dns.RcodeToString[reply.Rcode]).Inc()
	s.m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
}

// finish shapes reply for the client (ID, question, EDNS0, truncation)
// and writes it.
func (s *Server) finish(w dns.ResponseWriter, r, reply *dns.Msg) {
	reply.Id = r.Id
	reply.Response = true
	reply.Opcode = r.Opcode
	reply.RecursionDesired = r.RecursionDesired
	reply.RecursionAvailable = true
	reply.Compress = true
	if len(r.Question) > 0 {
		reply.Question = r.Question[:1]
	}
	stripOPT(reply)
	size := dns.MinMsgSize
	if opt := r.IsEdns0(); opt != nil {
		reply.SetEdns0(ednsSize, opt.Do())
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
	}
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		reply.Truncate(size)
	} else {
		reply.Truncate(dns.MaxMsgSize)
	}
	if err := w.WriteMsg(reply); err != nil {
		s.log.Debug("write dns reply", "remote", fmt.Sprint(w.RemoteAddr()), "err", err)
	}
}

// resolve produces the answer to r and the route it took.
func (s *Server) resolve(ctx context.Context, r *dns.Msg) (*dns.Msg, string) {
	if r.Opcode != dns.OpcodeQuery {
		return new(dns.Msg).SetRcode(r, dns.RcodeNotImplemented), routeLocal
	}
	if len(r.Question) != 1 {
		return new(dns.Msg).SetRcode(r, dns.RcodeFormatError), routeLocal
	}
	q := r.Question[0]
	if _, ok := dns.IsDomainName(q.Name); !ok || !dns.IsFqdn(q.Name) {
		return new(dns.Msg).SetRcode(r, dns.RcodeFormatError), routeLocal
	}
	if m := s.ownAnswer(r, q); m != nil {
		return m, routeLocal
	}
	route, rewritten := routeName(q.Name, s.domain, s.cfg)
	var servers []string
	dial := s.dialUp
	switch route {
	case RouteCluster:
		if q.Qtype == dns.TypeAAAA && !s.cfg.ClusterIPv6 {
			return s.nodata(r), route
		}
		servers, dial = s.clusterDNS, s.dialClust
	default:
		rewritten = q.Name // keep the client's case (0x20) for the upstream
		servers = s.upstreams
	}
	do := false
	if opt := r.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	key := keyOf(q)
	key.do = do
	if m := s.cache.get(key); m != nil {
		s.m.cacheHits.WithLabelValues(route).Inc()
		renameOwners(m, strings.ToLower(q.Name), q.Name)
		return m, route
	}
	if len(servers) == 0 {
		return new(dns.Msg).SetRcode(r, dns.RcodeServerFailure), route
	}
	query := new(dns.Msg)
	query.Id = dns.Id()
	query.RecursionDesired = r.RecursionDesired
	query.CheckingDisabled = r.CheckingDisabled
	query.Question = []dns.Question{{Name: rewritten, Qtype: q.Qtype, Qclass: q.Qclass}}
	query.SetEdns0(ednsSize, do)
	// Concurrent misses for one question share one exchange.
	v, err, shared := s.flight.Do(fmt.Sprintf("%s %s %d %d %v", route, key.name, key.qtype, key.qclass, key.do), func() (any, error) {
		return s.exchange(ctx, route, dial, servers, query)
	})
	var resp *dns.Msg
	if err == nil {
		resp = v.(*dns.Msg)
		if shared {
			resp = resp.Copy()
		}
	}
	if err != nil {
		s.m.upstreamFailures.WithLabelValues(route).Inc()
		s.log.Debug("dns exchange failed", "route", route, "name", q.Name, "err", err)
		return new(dns.Msg).SetRcode(r, dns.RcodeServerFailure), route
	}
	stripOPT(resp)
	resp.Question = []dns.Question{q}
	renameOwners(resp, rewritten, q.Name)
	if resp.Rcode != dns.RcodeServerFailure {
		s.cache.put(key, resp)
	}
	return resp, route
}

// ownAnswer answers queries about the proxy itself, or returns nil.
func (s *Server) ownAnswer(r *dns.Msg, q dns.Question) *dns.Msg {
	name := strings.ToLower(q.Name)
	switch {
	case name == ListenerName:
		m := new(dns.Msg).SetReply(r)
		m.Authoritative = true
		for _, ip := range s.ownIPs {
			if ip.Is4() && q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: ip.AsSlice()})
			}
			if ip.Is6() && q.Qtype == dns.TypeAAAA {
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 60}, AAAA: ip.AsSlice()})
			}
		}
		return m
	case s.own[name]:
		m := new(dns.Msg).SetReply(r)
		m.Authoritative = true
		if q.Qtype == dns.TypePTR {
			m.Answer = []dns.RR{&dns.PTR{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 60}, Ptr: ListenerName}}
		}
		return m
	}
	return nil
}

// nodata is the immediate answer to AAAA for a cluster name on an
// IPv4-only cluster: NOERROR, no records, an SOA so clients cache it.
func (s *Server) nodata(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg).SetReply(r)
	m.Authoritative = true
	zone := s.domain + "."
	m.Ns = []dns.RR{&dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 30},
		Ns:      "ns.dns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: 30,
	}}
	return m
}

// exchange asks servers in order until one answers, sharing ctx's
// deadline between them; SERVFAIL/REFUSED moves on to the next server
// and is returned only if nobody does better.
func (s *Server) exchange(ctx context.Context, route string, dial dialFunc, servers []string, m *dns.Msg) (*dns.Msg, error) {
	var errs []error
	var fallback *dns.Msg
	deadline, _ := ctx.Deadline()
	for i, srv := range servers {
		share := time.Until(deadline) / time.Duration(len(servers)-i)
		actx, cancel := context.WithTimeout(ctx, share)
		resp, err := exchangeUDP(actx, dial, s.pool(route, srv), srv, m)
		if err == nil && resp.Truncated {
			resp, err = exchangeOne(actx, dial, "tcp", srv, m)
		}
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
			if fallback == nil {
				fallback = resp
			}
			continue
		}
		return resp, nil
	}
	if fallback != nil {
		return fallback, nil
	}
	return nil, errors.Join(errs...)
}

// exchangeUDP is exchangeOne over UDP with a socket from pool, put back
// after a clean exchange: dialling a fresh socket per query cost more
// than the forwarding itself. Replies are still matched by ID and
// question, so a late answer to an earlier query on the socket is skipped.
func exchangeUDP(ctx context.Context, dial dialFunc, pool chan net.Conn, addr string, m *dns.Msg) (*dns.Msg, error) {
	var conn net.Conn
	select {
	case conn = <-pool:
	default:
		c, err := dial(ctx, "udp", addr)
		if err != nil {
			return nil, fmt.Errorf("dial udp %s: %w", addr, err)
		}
		conn = c
	}
	r, err := exchangeConn(ctx, conn, "udp", addr, m)
	if err != nil {
		conn.Close()
		return nil, err
	}
	select {
	case pool <- conn:
	default:
		conn.Close()
	}
	return r, nil
}

// exchangeOne sends m to addr over network and waits for the matching
// reply. UDP is spoken as raw datagrams on the dialled conn, so any
// net.Conn the dialler returns works (netstack's included); TCP uses
// dns.Conn's length framing.
func exchangeOne(ctx context.Context, dial dialFunc, network, addr string, m *dns.Msg) (*dns.Msg, error) {
	conn, err := dial(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, addr, err)
	}
	defer conn.Close()
	return exchangeConn(ctx, conn, network, addr, m)
}

// exchangeConn is one exchange on conn; it leaves conn open.
func exchangeConn(ctx context.Context, conn net.Conn, network, addr string, m *dns.Msg) (*dns.Msg, error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	match := func(r *dns.Msg) bool {
		return r.Id == m.Id && r.Response && len(r.Question) == 1 &&
			r.Question[0].Qtype == m.Question[0].Qtype && strings.EqualFold(r.Question[0].Name, m.Question[0].Name)
	}
	if network == "tcp" {
		co := &dns.Conn{Conn: conn}
		if err := co.WriteMsg(m); err != nil {
			return nil, fmt.Errorf("write tcp %s: %w", addr, err)
		}
		r, err := co.ReadMsg()
		if err != nil {
			return nil, fmt.Errorf("read tcp %s: %w", addr, err)
		}
		if !match(r) {
			return nil, fmt.Errorf("read tcp %s: reply does not match query", addr)
		}
		return r, nil
	}
	buf, err := m.Pack()
	if err != nil {
		return nil, fmt.Errorf("pack query: %w", err)
	}
	if _, err := conn.Write(buf); err != nil {
		return nil, fmt.Errorf("write udp %s: %w", addr, err)
	}
	bp := udpBufs.Get().(*[]byte)
	defer udpBufs.Put(bp)
	in := *bp
	for {
		n, err := conn.Read(in)
		if err != nil {
			return nil, fmt.Errorf("read udp %s: %w", addr, err)
		}
		r := new(dns.Msg)
		if r.Unpack(in[:n]) != nil || !match(r) {
			continue // garbage or a stale reply: keep waiting for ours
		}
		return r, nil
	}
}

// udpBufs holds receive buffers for the largest UDP reply; allocating
// 64 KiB per query showed up in the benchmark.
var udpBufs = sync.Pool{New: func() any { b := make([]byte, dns.MaxMsgSize); return &b }}

// renameOwners gives records owned by from (the name asked of the
// resolver) the owner to (the name the client asked). Only owners are
// touched: CNAME targets and other rdata stay as the resolver said.
func renameOwners(m *dns.Msg, from, to string) {
	if from == to {
		return
	}
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if h := rr.Header(); strings.EqualFold(h.Name, from) {
				h.Name = to
			}
		}
	}
}

// stripOPT removes OPT records; finish adds the proxy's own.
func stripOPT(m *dns.Msg) {
	out := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	m.Extra = out
}
