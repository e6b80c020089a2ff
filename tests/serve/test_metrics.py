"""The Prometheus text of the service's counters, by hand."""

from recfunnel.serve.metrics import Metrics


def test_metrics_text_by_hand():

    metrics = Metrics()
    metrics.observe("/recommend", "POST", 200, 0.003)
    metrics.observe("/recommend", "POST", 200, 0.004)
    metrics.observe("/recommend", "POST", 422, 0.0004)
    metrics.observe_funnel("user", {"retrieve": 1.5, "rank": 2.0})
    metrics.observe_funnel("popular", {"retrieve": 0.5})
    lines = set(metrics.render().splitlines())
    assert {
        'recfunnel_http_requests_total{route="/recommend",method="POST",status="200"} 2',
        'recfunnel_http_requests_total{route="/recommend",method="POST",status="422"} 1',
        'recfunnel_http_request_duration_seconds_bucket{route="/recommend",le="0.001"} 1',
        'recfunnel_http_request_duration_seconds_bucket{route="/recommend",le="0.0025"} 1',
        'recfunnel_http_request_duration_seconds_bucket{route="/recommend",le="0.005"} 3',
        'recfunnel_http_request_duration_seconds_bucket{route="/recommend",le="+Inf"} 3',
        'recfunnel_http_request_duration_seconds_sum{route="/recommend"} 0.007400',
        'recfunnel_http_request_duration_seconds_count{route="/recommend"} 3',
        'recfunnel_http_request_latency_seconds{route="/recommend",quantile="0.5"} 0.003000',
        'recfunnel_funnel_stage_seconds_sum{stage="retrieve"} 0.002000',
        'recfunnel_funnel_stage_seconds_count{stage="retrieve"} 2',
        'recfunnel_recommendations_total{source="popular"} 1',
    } <= lines
    assert metrics.requests("/recommend") == 3 and metrics.requests(status=422) == 1
