use super::same_policy;

#[test]
fn policies_compare_as_json_after_url_decoding() {
    let wanted = "{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": []\n}\n";
    assert!(same_policy(
        "%7B%22Version%22%3A%20%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D",
        wanted
    ));
    assert!(same_policy(
        r#"{"Statement":[],"Version":"2012-10-17"}"#,
        wanted
    ));
    assert!(!same_policy(r#"{"Version":"2012-10-17"}"#, wanted));
    assert!(!same_policy("not json", wanted));
}
