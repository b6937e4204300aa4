"""What the unsubscribe pages say, per locale. `{brand}` and `{address}` are filled in (and then
HTML-escaped by the page template); the fonts match the email layouts of the same locale."""

from __future__ import annotations

COPY: dict[str, dict[str, str]] = {
    "en": {
        "fonts": "Helvetica,Arial,sans-serif",
        "confirm_heading": "Unsubscribe from {brand} emails?",
        "confirm_marketing": "{address} will stop receiving our offers and news. "
                             "Order confirmations and shipping updates will still reach you.",
        "confirm_group": "{address} will stop receiving emails of this kind from us. "
                         "Order confirmations and shipping updates will still reach you.",
        "unsubscribe_button": "Unsubscribe",
        "done_heading": "You are unsubscribed",
        "done_text": "{address} will not receive these emails any more. "
                     "Order confirmations and shipping updates will still arrive.",
        "resubscribe_button": "Subscribe again",
        "resubscribed_heading": "You are subscribed again",
        "resubscribed_text": "Welcome back. {address} will receive our emails again.",
        "invalid_heading": "This link does not work",
        "invalid_text": "This unsubscribe link is incomplete or has been changed. Please open the link "
                        "exactly as it is in the email, or reply to the email and we will unsubscribe you.",
    },
    "th": {
        "fonts": "Tahoma,'Leelawadee UI','Noto Sans Thai',Arial,sans-serif",
        "confirm_heading": "ยกเลิกการรับอีเมลจาก {brand} ใช่ไหม",
        "confirm_marketing": "{address} จะไม่ได้รับข่าวสารและข้อเสนอพิเศษจากเราอีก "
                             "แต่ยังคงได้รับอีเมลยืนยันคำสั่งซื้อและแจ้งการจัดส่งตามปกติ",
        "confirm_group": "{address} จะไม่ได้รับอีเมลประเภทนี้จากเราอีก "
                         "แต่ยังคงได้รับอีเมลยืนยันคำสั่งซื้อและแจ้งการจัดส่งตามปกติ",
        "unsubscribe_button": "ยกเลิกการรับอีเมล",
        "done_heading": "ยกเลิกการรับอีเมลเรียบร้อยแล้ว",
        "done_text": "{address} จะไม่ได้รับอีเมลเหล่านี้อีก "
                     "ส่วนอีเมลยืนยันคำสั่งซื้อและแจ้งการจัดส่งจะยังส่งถึงคุณตามปกติ",
        "resubscribe_button": "สมัครรับอีเมลอีกครั้ง",
        "resubscribed_heading": "สมัครรับอีเมลอีกครั้งเรียบร้อยแล้ว",
        "resubscribed_text": "ยินดีต้อนรับกลับมา {address} จะได้รับอีเมลจากเราอีกครั้ง",
        "invalid_heading": "ลิงก์นี้ใช้งานไม่ได้",
        "invalid_text": "ลิงก์ยกเลิกการรับอีเมลนี้ไม่สมบูรณ์หรือถูกแก้ไข กรุณาเปิดลิงก์จากอีเมลโดยตรง "
                        "หรือตอบกลับอีเมลนั้น แล้วเราจะยกเลิกการรับอีเมลให้",
    },
    "zh-Hant": {
        "fonts": "'PingFang TC','Microsoft JhengHei','Noto Sans TC',Arial,sans-serif",
        "confirm_heading": "要取消訂閱 {brand} 的電子郵件嗎？",
        "confirm_marketing": "{address} 將不再收到我們的優惠與最新消息。訂單確認與出貨通知仍會照常寄送。",
        "confirm_group": "{address} 將不再收到我們的這類郵件。訂單確認與出貨通知仍會照常寄送。",
        "unsubscribe_button": "取消訂閱",
        "done_heading": "已取消訂閱",
        "done_text": "{address} 將不再收到這些郵件。訂單確認與出貨通知仍會照常寄送。",
        "resubscribe_button": "重新訂閱",
        "resubscribed_heading": "已重新訂閱",
        "resubscribed_text": "歡迎回來！{address} 將再次收到我們的郵件。",
        "invalid_heading": "這個連結無法使用",
        "invalid_text": "這個取消訂閱連結不完整或已被更改。請直接開啟郵件中的連結，或回覆該郵件，我們會為您取消訂閱。",
    },
}


def page_locale(locale: str | None) -> str:
    """th-TH -> th; any Chinese -> zh-Hant (the only Chinese copy); anything else -> en."""
    lang = (locale or "").replace("_", "-").split("-")[0].lower()
    return {"th": "th", "zh": "zh-Hant"}.get(lang, "en")
