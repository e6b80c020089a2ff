"""`recfunnel bench quality`'s funnel table: the ratios the funnel's targets are stated in."""

from recfunnel.bench.quality import print_quality


def test_the_funnel_table_states_each_stage_against_the_one_before_and_ease(capsys):
    variants = {
        "most_popular": {"ndcg_at_10": 0.05},
        "ease": {"ndcg_at_10": 0.10},
        "retrieval": {"ndcg_at_10": 0.12},
        "retrieval+ranking": {"ndcg_at_10": 0.15},
    }
    changes = [  # as `recfunnel evaluate --json` gives them
        {"variant": "retrieval+ranking", "against": "retrieval", "change": 0.25, "interval": [0.1, 0.4]},
        {"variant": "retrieval+ranking", "against": "ease", "change": 0.5, "interval": [0.3, 0.7]},
        {"variant": "retrieval", "against": "ease", "change": 0.2, "interval": [-0.05, 0.45]},
    ]
    print_quality({"funnel-temporal": {"seconds": 60.0, "users": 943, "variants": variants, "changes": changes}})
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("funnel-temporal"))
    assert row.split()[1:6] == ["943", "0.05", "0.1", "0.12", "0.15"]
    # ranking / retrieval, ranking / EASE, retrieval / EASE, each with its interval over the users
    assert row.split()[6:12] == ["+25.0%", "(+10%..+40%)", "+50.0%", "(+30%..+70%)", "+20.0%", "(-5%..+45%)"]
